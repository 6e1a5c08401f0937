"""A worker as a static member of its consumer group (``Settings.static_membership``)."""
from __future__ import annotations

from pathlib import Path

from floodgate.settings import Settings
from streams.app import create_app


def test_a_static_member_is_named_by_its_worker_id(tmp_path: Path) -> None:
    """``static_membership`` gives the worker's consumer its group.instance.id, from the worker id;
    off (the default), the worker joins as a dynamic member."""
    base = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path, worker_id="worker-3")
    assert create_app(base, datadir=tmp_path / "a").conf.consumer_group_instance_id is None
    static = base.with_overrides(static_membership=True)
    assert create_app(static, datadir=tmp_path / "b").conf.consumer_group_instance_id == "worker-3"
    env = Settings.from_env({"FLOODGATE_STATIC_MEMBERSHIP": "true", "FLOODGATE_WORKER_ID": "w-9"})
    assert env.static_membership and env.worker_id == "w-9"
