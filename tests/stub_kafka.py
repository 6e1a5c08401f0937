"""A stand-in Kafka broker for tests that need aiokafka's real producer facing answers a real
single-node broker cannot be made to give (NOT_ENOUGH_REPLICAS: it caps min.insync.replicas at the
replication factor). It speaks just enough of the protocol, with aiokafka's own structs:
ApiVersions (pinning the versions below, which aiokafka then uses and no others), Metadata and
InitProducerId here; Produce in each test's subclass (``produce``)."""
from __future__ import annotations

import asyncio
import struct
from io import BytesIO
from typing import Self

from aiokafka.protocol.admin import ApiVersionResponse_v0
from aiokafka.protocol.metadata import MetadataResponse_v0
from aiokafka.protocol.produce import ProduceRequest_v3
from aiokafka.protocol.struct import Struct
from aiokafka.protocol.transaction import InitProducerIdResponse_v0

PRODUCE, METADATA, API_VERSIONS, INIT_PRODUCER_ID = 0, 3, 18, 22
MESSAGE_TOO_LARGE, NOT_ENOUGH_REPLICAS, OUT_OF_ORDER_SEQUENCE_NUMBER = 10, 19, 45


class StubKafka:
    """One node, id 0, leading every partition of ``topic`` (``partitions`` of them); each producer
    that asks gets a new producer id."""

    def __init__(self, topic: str, partitions: int = 1) -> None:
        self.topic = topic
        self.partitions = partitions
        self.port = 0
        self._producer_ids = 1000
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    def produce(self, request: ProduceRequest_v3) -> Struct:
        """The answer to a produce request (a subclass's)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
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
        if api_key == API_VERSIONS:
            return ApiVersionResponse_v0(0, [(API_VERSIONS, 0, 0), (METADATA, 0, 0), (INIT_PRODUCER_ID, 0, 0),
                                             (PRODUCE, 3, 3)])
        if api_key == METADATA:
            partitions = [(0, p, 0, [0], [0]) for p in range(self.partitions)]
            return MetadataResponse_v0([(0, "127.0.0.1", self.port)], [(0, self.topic, partitions)])
        if api_key == INIT_PRODUCER_ID:
            self._producer_ids += 1
            return InitProducerIdResponse_v0(0, 0, self._producer_ids, 0)
        if api_key == PRODUCE:
            return self.produce(ProduceRequest_v3.decode(request))
        raise AssertionError(f"the stand-in does not answer API {api_key}")
