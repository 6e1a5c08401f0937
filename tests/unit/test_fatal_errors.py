"""Telling librdkafka's fatal errors apart (floodgate/fatal_errors.py): the forms confluent-kafka
raises them in. The real errors are raised on librdkafka's mock cluster in
tests/unit/test_sdk_fatal.py and tests/unit/test_api_sender_fatal.py."""
from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from floodgate.fatal_errors import fatal_in, is_fatal

FATAL = KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "out of order", fatal=True)


def _raised_from(cause: BaseException) -> SystemError:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise SystemError("flush returned a result with an exception set") from inner
    except SystemError as outer:
        return outer


def test_a_fatal_error_is_told_in_every_form_it_comes_in() -> None:
    assert fatal_in(KafkaException(FATAL)) is FATAL
    assert fatal_in(_raised_from(KafkaException(FATAL))) is FATAL
    bare = fatal_in(SystemError("<built-in method flush> returned NULL without setting an exception"))
    assert bare is not None and is_fatal(bare) and "returned NULL" in bare.str()


def test_what_is_not_fatal_is_not_told_as_fatal() -> None:
    transient = KafkaError(KafkaError._MSG_TIMED_OUT, "timed out")
    assert fatal_in(KafkaException(transient)) is None
    assert fatal_in(_raised_from(KafkaException(transient))) is None  # a SystemError, but for a transient error
    assert fatal_in(ValueError("no")) is None
    assert not is_fatal(transient)
    assert is_fatal(KafkaError(KafkaError._FATAL, "Unable to produce message"))  # produce()'s answer, fatal() False
