"""A static member's leave: a worker that stops for good tells its consumer group at once.

With static membership (``FLOODGATE_STATIC_MEMBERSHIP``) a worker joins its group under a name of
its own (``localstate.worker_name``). A worker that crashes and comes back within the session
timeout then gets its partitions again without a rebalance: the other workers go on, and none of
them starts its table replays again. The price is on the way out: aiokafka, as Kafka's own Java
consumer, sends no LeaveGroup for a static member (a leave on every stop would make every restart
a rebalance), so a worker stopped for good, by a scale-down or a deploy, would hold its
partitions, and their jobs, until the session timeout.

``leave`` closes that gap. Once the worker's consumer has stopped, it sends LeaveGroup v3 (Kafka
2.4 and later), which names the member by its instance id, to the group's coordinator: the group
rebalances at once, as it does when a worker without a static name stops. A worker killed
(SIGKILL, a crash, a lost host) sends nothing and comes back under the same name; that is the case
static membership is for.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.client import AIOKafkaClient, ConnectionGroup, CoordinationType
from aiokafka.errors import for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

log = logging.getLogger(__name__)

LEAVE_GROUP = 13  # the LeaveGroup API's key
UNKNOWN_MEMBER_ID = ""  # with an instance id: whichever member holds that name now


class LeaveGroupResponse_v3(Response):  # (the protocol's naming, as aiokafka's)
    API_KEY = LEAVE_GROUP
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")),
                          ("error_code", Int16))),
    )


class LeaveGroupRequest_v3(RequestStruct):
    API_KEY = LEAVE_GROUP
    API_VERSION = 3
    RESPONSE_TYPE = LeaveGroupResponse_v3
    SCHEMA = Schema(
        ("group", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class StaticLeave(Request[LeaveGroupRequest_v3]):
    """LeaveGroup for one static member, named by its instance id."""

    API_KEY = LEAVE_GROUP

    def __init__(self, group: str, instance_id: str) -> None:
        self.group, self.instance_id = group, instance_id

    def build(self, request_struct_class: type[LeaveGroupRequest_v3]) -> LeaveGroupRequest_v3:
        return request_struct_class(self.group, [(UNKNOWN_MEMBER_ID, self.instance_id)])


@dataclass(frozen=True)
class Left:
    """What the coordinator answered: ``error`` is the group's or the member's error name, None
    when the member left. ``UnknownMemberIdError`` means it was gone already (its session ran
    out, or another leave came first)."""

    error: str | None

    @property
    def gone(self) -> bool:
        return self.error in (None, "UnknownMemberIdError")


def answer(response: LeaveGroupResponse_v3) -> Left:
    """The outcome of a LeaveGroup v3 response: the group's error, else the member's."""
    codes = [response.error_code, *(code for _, _, code in response.members)]
    for code in codes:
        if code:
            return Left(for_code(code).__name__)
    return Left(None)


async def leave(bootstrap: str, group: str, instance_id: str, timeout: float = 10.0) -> Left:
    """Take the static member ``instance_id`` out of ``group`` now. Raises ``TimeoutError`` past
    ``timeout`` and aiokafka's errors when the cluster cannot be reached."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, client_id=f"{instance_id}-leave")
    try:
        async with asyncio.timeout(timeout):
            await client.bootstrap()
            node = await client.coordinator_lookup(CoordinationType.GROUP, group)
            response = await client.send(node, StaticLeave(group, instance_id), group=ConnectionGroup.COORDINATION)
            return answer(response)
    finally:
        await client.close()


def leave_on_exit(bootstrap: str, group: str, instance_id: str) -> None:
    """``leave``, from a process whose event loop has stopped; a failure is logged, never raised
    (the group then moves the partitions at the session timeout, as it would after a crash)."""
    try:
        left = asyncio.run(leave(bootstrap, group, instance_id))
    except Exception as exc:  # the worker is on its way out: say what happened, nothing more
        log.warning("static member %s could not leave group %s (%s): its partitions move at the session "
                    "timeout", instance_id, group, exc)
        return
    if left.error is None:
        log.info("static member %s left group %s", instance_id, group)
    elif left.gone:
        log.info("static member %s was no longer in group %s", instance_id, group)
    else:
        log.warning("static member %s did not leave group %s: %s", instance_id, group, left.error)
