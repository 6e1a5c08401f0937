"""The API's producer after a broker restart: a refused sequence replaces the producer, once."""
from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import OutOfOrderSequenceNumber

from floodgate.api.kafka_io import KafkaSender
from floodgate.errors import KafkaUnavailable


class FakeProducer:
    def __init__(self, broken: bool) -> None:
        self.broken = broken
        self.sent: list[bytes] = []
        self.stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, *, value: bytes, key: bytes | None, headers: Any) -> asyncio.Future[None]:
        await asyncio.sleep(0)  # every concurrent send is under way before the first answer
        if self.broken:
            raise OutOfOrderSequenceNumber()
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class Sender(KafkaSender):
    def __init__(self) -> None:
        self.made: list[FakeProducer] = []
        super().__init__("127.0.0.1:1")

    def _new_producer(self) -> Any:
        self.made.append(FakeProducer(broken=not self.made))  # the first one has lost its sequence
        return self.made[-1]


async def test_an_out_of_order_answer_replaces_the_producer_once() -> None:
    sender = Sender()
    results = await asyncio.gather(*(sender.send_and_wait("t", "k", b"v", []) for _ in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, KafkaUnavailable) for r in results)  # never acknowledged: 503, client retries
    assert len(sender.made) == 2, "five failures, one new producer"
    await asyncio.sleep(0)
    assert sender.made[0].stopped
    await sender.send_and_wait("t", "k", b"after", [])
    assert sender.made[1].sent == [b"after"]
