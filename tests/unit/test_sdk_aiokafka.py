"""The async SDK client with aiokafka's real producer, against a stand-in broker.

The stand-in speaks just enough of the Kafka protocol (ApiVersions, Metadata, InitProducerId,
Produce; aiokafka's own structs encode and decode it) and refuses every write with
NOT_ENOUGH_REPLICAS until told otherwise: what a broker answers while the other replicas of a
partition are down. aiokafka's idempotent producer retries that for as long as it runs, so a
record whose submit gave up would be written once the broker takes writes again. A real
single-node broker cannot be made to refuse so (it caps min.insync.replicas at the replication
factor), hence the stand-in."""
from __future__ import annotations

import pytest
from aiokafka.protocol.produce import ProduceRequest_v3, ProduceResponse_v3
from aiokafka.protocol.struct import Struct
from aiokafka.record.memory_records import MemoryRecords

from floodgate.ids import job_id_for_key
from floodgate.sdk import AsyncFloodgateClient, DeliveryError
from tests.stub_kafka import NOT_ENOUGH_REPLICAS, StubKafka

SECRET = b"k" * 16


class StubBroker(StubKafka):
    """One broker leading the one partition of ``topic``. ``refusal``: the error code every
    produce request gets (None: records are appended to ``written``). ``produced`` lists the
    record keys of every produce request received, in order."""

    def __init__(self, topic: str) -> None:
        super().__init__(topic)
        self.refusal: int | None = NOT_ENOUGH_REPLICAS
        self.produced: list[list[bytes]] = []
        self.written: list[bytes] = []

    def produce(self, request: ProduceRequest_v3) -> Struct:
        [(topic, [(partition, data)])] = request.topics
        keys: list[bytes] = []
        records = MemoryRecords(data)
        while (batch := records.next_batch()) is not None:
            keys.extend(record.key for record in batch)
        self.produced.append(keys)
        if self.refusal is not None:
            return ProduceResponse_v3([(topic, [(partition, self.refusal, -1, -1)])], 0)
        offset = len(self.written)
        self.written.extend(keys)
        return ProduceResponse_v3([(topic, [(partition, 0, offset, -1)])], 0)


async def test_a_record_the_broker_kept_refusing_is_not_written_after_its_submit_said_unknown() -> None:
    async with StubBroker("fg.requests") as broker:
        client = AsyncFloodgateClient(f"127.0.0.1:{broker.port}", tenant="acme", topic_prefix="fg.",
                                      id_secret=SECRET, send_timeout=1.0)
        refused = job_id_for_key(SECRET, "acme", "refused").encode()
        try:
            with pytest.raises(DeliveryError, match="outcome unknown") as info:
                await client.submit("sora-2", "a whale", user_id="u", idempotency_key="refused")
            assert info.value.retriable and info.value.job_id == refused.decode()
            assert len(broker.produced) > 1  # aiokafka did retry it, and would have gone on
            received = len(broker.produced)
            broker.refusal = None  # the other replicas are back: the broker takes writes again
            sentinel = await client.submit("sora-2", "sentinel", user_id="u")
            assert client.renewals == 1
        finally:
            await client.close()
        # Nothing carried the record after the caller was told: the broker never wrote it.
        assert all(refused not in keys for keys in broker.produced[received:])
        assert broker.written == [sentinel.encode()]
