"""A worker as a static member of its consumer group (``Settings.static_membership``)."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from floodgate.settings import Settings
from streams import static_member
from streams.app import create_app
from streams.static_member import LeaveGroupRequest_v3, LeaveGroupResponse_v3, Left, StaticLeave, answer


def test_a_worker_is_a_static_member_named_by_its_worker_id(tmp_path: Path) -> None:
    """By default the worker's consumer has a group.instance.id, its worker id; turned off, the
    worker joins as a dynamic member."""
    base = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path, worker_id="worker-3")
    assert create_app(base, datadir=tmp_path / "a").conf.consumer_group_instance_id == "worker-3"
    dynamic = base.with_overrides(static_membership=False)
    assert create_app(dynamic, datadir=tmp_path / "b").conf.consumer_group_instance_id is None
    env = Settings.from_env({"FLOODGATE_STATIC_MEMBERSHIP": "false", "FLOODGATE_WORKER_ID": "w-9"})
    assert not env.static_membership and env.worker_id == "w-9"


def test_the_leave_names_the_member_by_its_instance_id_alone() -> None:
    request = StaticLeave("floodgate", "worker-3").prepare({13: (0, 5)})
    assert isinstance(request, LeaveGroupRequest_v3), "v3 is the first LeaveGroup that names an instance"
    wire = request.encode()
    decoded = LeaveGroupRequest_v3.decode(io.BytesIO(wire))
    assert decoded.group == "floodgate" and decoded.members == [("", "worker-3")]


def test_the_leaves_answer_is_the_groups_error_else_the_members() -> None:
    assert answer(LeaveGroupResponse_v3(0, 0, [("m-1", "worker-3", 0)])).error is None
    gone = answer(LeaveGroupResponse_v3(0, 0, [("", "worker-3", 25)]))  # 25: UNKNOWN_MEMBER_ID
    assert gone.error == "UnknownMemberIdError" and gone.gone
    fenced = answer(LeaveGroupResponse_v3(0, 0, [("m-2", "worker-3", 82)]))  # 82: FENCED_INSTANCE_ID
    assert not fenced.gone
    assert answer(LeaveGroupResponse_v3(0, 16, [])).error == "NotCoordinatorForGroupError"


@pytest.mark.parametrize(("outcome", "said"), [
    (Left(None), "static member w-1 left group g"),
    (Left("UnknownMemberIdError"), "static member w-1 was no longer in group g"),
    (Left("FencedInstanceIdError"), "static member w-1 did not leave group g: FencedInstanceIdError"),
])
def test_the_leave_on_exit_says_what_the_coordinator_answered(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, outcome: Left, said: str) -> None:
    async def answered(bootstrap: str, group: str, instance_id: str) -> Left:
        return outcome

    monkeypatch.setattr(static_member, "leave", answered)
    with caplog.at_level(logging.INFO, logger="streams.static_member"):
        static_member.leave_on_exit("127.0.0.1:1", "g", "w-1")
    assert [r.getMessage() for r in caplog.records] == [said]


def test_a_leave_that_cannot_reach_the_cluster_is_logged_never_raised(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def unreachable(bootstrap: str, group: str, instance_id: str) -> Left:
        raise ConnectionRefusedError("no broker")

    monkeypatch.setattr(static_member, "leave", unreachable)
    static_member.leave_on_exit("127.0.0.1:1", "g", "w-1")
    assert "could not leave group g (no broker)" in caplog.text
