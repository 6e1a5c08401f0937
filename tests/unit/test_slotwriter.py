"""Which providers' slot tables write through the worker's slot writer (streams/slotwriter.py);
the writer itself is tested on a broker (tests/integration/test_slot_writer.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from floodgate.errors import ConfigError
from floodgate.provider_config import dev_setup
from floodgate.settings import Settings
from streams.app import create_app
from streams.context import Pipeline
from streams.dispatcher import Dispatcher
from streams.slotwriter import writes_alone


@pytest.mark.parametrize(("limit", "max_limit", "alone"), [
    (5, 50, True), (50, 50, True), (51, 50, False), (500, 50, False), (5, 0, False)])
def test_a_provider_writes_alone_up_to_the_configured_limit(limit: int, max_limit: int, alone: bool) -> None:
    assert writes_alone(limit, max_limit) is alone


def _settings(tmp_path: Path, slot_producer_limit: int) -> Settings:
    return Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path,
                                                simulator_url="http://127.0.0.1:9",
                                                slot_producer_limit=slot_producer_limit)


@pytest.mark.parametrize(("slot_producer_limit", "through_writer"), [(10, True), (9, False)])
async def test_every_table_of_a_lane_writes_through_the_same_producer(tmp_path: Path, slot_producer_limit: int,
                                                                      through_writer: bool) -> None:
    """All or none of a lane's tables: a key's records (a waiting order, its slot, the slot's
    deletion) must keep their order, and two producers would not keep it."""
    settings = _settings(tmp_path, slot_producer_limit)
    app = create_app(settings, datadir=tmp_path / "w0")
    setup = dev_setup(settings.simulator_url)  # every provider's limit is 10
    pipe = Pipeline(app, settings, setup, setup.build_connectors())
    lane = Dispatcher(pipe, "wan").lane
    expected = app.slot_writer if through_writer else None
    assert app.slot_writer is not None
    assert [t.writer for t in (lane.entries, lane.old_waiting, lane.marks)] == [expected] * 3
    assert app.slot_writer.enlisted is through_writer
    await pipe.close()


def test_no_writer_at_all_when_the_limit_is_zero(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, 0), datadir=tmp_path / "w0")
    assert app.slot_writer is None


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match="SLOT_PRODUCER_LIMIT"):
        Settings.from_env({"FLOODGATE_SLOT_PRODUCER_LIMIT": "-1"})
