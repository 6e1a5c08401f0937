"""A real fatal error in a real librdkafka producer, on demand (for tests on librdkafka's mock
cluster, ``test.mock.num.brokers``: no broker needed).

librdkafka raises one with ``rd_kafka_test_fatal_error()``, which confluent-kafka does not expose:
this calls it through ctypes with the producer's ``rd_kafka_t`` handle (the first field after
``PyObject_HEAD`` of confluent-kafka's ``Handle``; checked to be one before it is used)."""
from __future__ import annotations

import ctypes
from pathlib import Path

import confluent_kafka
from confluent_kafka import KafkaError, Producer


def _librdkafka() -> ctypes.CDLL:
    package = Path(confluent_kafka.__file__).parent
    found = sorted(package.parent.glob("confluent_kafka.libs/librdkafka*.so*"))
    assert found, f"no librdkafka bundled beside {package}"
    lib = ctypes.CDLL(str(found[0]))  # the copy confluent-kafka already loaded
    lib.rd_kafka_name.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_name.restype = ctypes.c_char_p
    lib.rd_kafka_test_fatal_error.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    lib.rd_kafka_test_fatal_error.restype = ctypes.c_int
    return lib


def inject_fatal_error(producer: Producer, code: int = KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER) -> None:
    lib = _librdkafka()
    handle = ctypes.c_void_p.from_address(id(producer) + object.__basicsize__).value
    assert b"#producer-" in lib.rd_kafka_name(handle), "not a librdkafka handle"
    assert lib.rd_kafka_test_fatal_error(handle, code, b"injected by the test") == 0
