"""The async SDK client with aiokafka's real producer, against a stand-in broker.

The stand-in speaks just enough of the Kafka protocol (ApiVersions, Metadata, InitProducerId,
Produce; aiokafka's own structs encode and decode it) and refuses every write with
NOT_ENOUGH_REPLICAS until told otherwise: what a broker answers while the other replicas of a
partition are down. aiokafka's idempotent producer retries that for as long as it runs, so a
record whose submit gave up would be written once the broker takes writes again. A real
single-node broker cannot be made to refuse so (it caps min.insync.replicas at the replication
factor), hence the stand-in."""
from __future__ import annotations

import asyncio
import struct
from io import BytesIO

import pytest
from aiokafka.protocol.admin import ApiVersionResponse_v0
from aiokafka.protocol.metadata import MetadataResponse_v0
from aiokafka.protocol.produce import ProduceRequest_v3, ProduceResponse_v3
from aiokafka.protocol.struct import Struct
from aiokafka.protocol.transaction import InitProducerIdResponse_v0
from aiokafka.record.memory_records import MemoryRecords

from floodgate.ids import job_id_for_key
from floodgate.sdk import AsyncFloodgateClient, DeliveryError

SECRET = b"k" * 16
PRODUCE, METADATA, API_VERSIONS, INIT_PRODUCER_ID = 0, 3, 18, 22
NOT_ENOUGH_REPLICAS = 19


class StubBroker:
    """One broker leading the one partition of ``topic``. ``refusal``: the error code every
    produce request gets (None: records are appended to ``written``). ``produced`` lists the
    record keys of every produce request received, in order."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.refusal: int | None = NOT_ENOUGH_REPLICAS
        self.produced: list[list[bytes]] = []
        self.written: list[bytes] = []
        self._producer_ids = 1000
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> StubBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                (size,) = struct.unpack(">i", await reader.readexactly(4))
                request = BytesIO(await reader.readexactly(size))
                api_key, _version, correlation_id, client_id_len = struct.unpack(">hhih", request.read(10))
                request.read(max(client_id_len, 0))
                body = self._answer(api_key, request).encode()
                writer.write(struct.pack(">ii", len(body) + 4, correlation_id) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def _answer(self, api_key: int, request: BytesIO) -> Struct:
        if api_key == API_VERSIONS:  # only these versions: aiokafka then uses them and no others
            return ApiVersionResponse_v0(0, [(API_VERSIONS, 0, 0), (METADATA, 0, 0), (INIT_PRODUCER_ID, 0, 0),
                                             (PRODUCE, 3, 3)])
        if api_key == METADATA:
            return MetadataResponse_v0([(0, "127.0.0.1", self.port)], [(0, self.topic, [(0, 0, 0, [0], [0])])])
        if api_key == INIT_PRODUCER_ID:
            self._producer_ids += 1
            return InitProducerIdResponse_v0(0, 0, self._producer_ids, 0)
        if api_key == PRODUCE:
            produce = ProduceRequest_v3.decode(request)
            [(topic, [(partition, data)])] = produce.topics
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
        raise AssertionError(f"the stand-in does not answer API {api_key}")


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
