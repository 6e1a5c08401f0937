"""The submitter's per-provider bookkeeping: cancel marks expire only when no order can still need
them, and never count as held slots."""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from floodgate.dispatch import MARK_GRACE, MARK_MAX_AGE, CancelMark, Order, Parked, Slot, mark_expired, slot_key
from floodgate.pace import PRIOR_HOLDS
from floodgate.provider_config import dev_setup
from floodgate.settings import Settings
from streams.app import create_app
from streams.lane import Lane

T0 = 1_000_000.0


def _order(job_id: str) -> Order:
    return Order(job_id=job_id, tenant="t", model="wan-2.6", provider="wan", provider_model="wan-2.6",
                 prompt="p", attempt=0, queued_at=0)


def _slot(job_id: str, tenant: str | None = None) -> bytes:
    order = _order(job_id) if tenant is None else dataclasses.replace(_order(job_id), tenant=tenant)
    return Slot(attempt=0, taken_at=T0, order=order).encode()


@pytest.mark.parametrize(("end", "read_to", "age", "expired"), [
    # Every order written before the cancel has been read, and the grace period is over.
    (10, 9, MARK_GRACE, True),
    (10, 42, MARK_GRACE + 1, True),
    # Not yet read up to the partition's end at cancel time: the order may still come.
    (10, 8, MARK_GRACE + 1, False),
    (10, None, MARK_GRACE + 1, False),
    # Read past the end, but an order written just after the cancel may still be on its way.
    (10, 9, MARK_GRACE - 1, False),
    # An empty partition at cancel time had no order to wait for.
    (0, None, MARK_GRACE, True),
    (0, None, MARK_GRACE - 1, False),
    # End offset unknown (the broker did not answer): only the age bound lets it go.
    (None, 100, MARK_GRACE + 1, False),
    (None, None, MARK_MAX_AGE, True),
    # The age bound holds whatever the partition did.
    (10, None, MARK_MAX_AGE, True),
])
def test_cancel_marks_expire_once_no_order_can_need_them(end: int | None, read_to: int | None, age: float,
                                                         expired: bool) -> None:
    assert mark_expired(CancelMark(made_at=T0, end=end), read_to, T0 + age) is expired


def test_cancel_marks_do_not_count_as_held_slots(tmp_path: Path) -> None:
    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path)
    app = create_app(settings, datadir=tmp_path / "w0")
    lane = Lane(app, dev_setup("http://127.0.0.1:9").routing.providers["wan"], partitions=2)
    # As recovery from the changelogs would leave them: one held slot, two cancelled jobs.
    lane.slots.table.data[slot_key(0, "job-held")] = _slot("job-held")
    lane.marks.table.data[slot_key(0, "job-gone")] = CancelMark(made_at=T0, end=5).encode()
    lane.marks.table.data[slot_key(1, "job-other")] = CancelMark(made_at=T0, end=5).encode()
    lane.sync(0, generation=1)
    lane.sync(1, generation=1)
    assert set(lane.pools[0].held) == {"job-held"} and len(lane.pools[1]) == 0
    assert lane.marked(slot_key(0, "job-gone")) and not lane.marked(slot_key(0, "job-held"))
    assert not lane.marked(slot_key(1, "job-gone")), "marks are per partition, like slots"


def test_reconcile_drops_slots_the_table_no_longer_holds(tmp_path: Path) -> None:
    """A count taken mid-recovery can include a slot the changelog replay then deletes; the poll
    timer's reconcile must bring the count back to the table, or the partition stalls for good."""
    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path)
    app = create_app(settings, datadir=tmp_path / "w0")
    lane = Lane(app, dev_setup("http://127.0.0.1:9").routing.providers["wan"], partitions=2)
    share = lane.capacity(0)
    for i in range(share):
        lane.slots.table.data[slot_key(0, f"old-{i}")] = _slot(f"old-{i}")
    lane.sync(0, generation=1)
    lane.lines[0].push(_order("waiting"))
    assert lane.next_waiting(0) is None, "every slot is held"
    for i in range(share):  # the replay goes on: those jobs had ended
        del lane.slots.table.data[slot_key(0, f"old-{i}")]
    assert lane.next_waiting(0) is None, "the stale count alone never frees a slot"
    lane.reconcile(0)
    assert lane.next_waiting(0) == (_order("waiting"), True)
    assert len(lane.pools[0]) == 1


def test_each_partition_has_its_share_of_the_rate_and_the_breaker_its_reset_time(tmp_path: Path) -> None:
    """Whichever worker owns a partition sends at its bucket's pace: the buckets add up to the
    provider's rate, so more workers never mean more requests per second."""
    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path)
    app = create_app(settings, datadir=tmp_path / "w0")
    spec = dataclasses.replace(dev_setup("http://127.0.0.1:9").routing.providers["wan"], rate_per_second=6.0)
    lane = Lane(app, spec, partitions=3, breaker_reset_after=2.5)
    assert sorted(lane.buckets) == [0, 1, 2]
    assert [b.rate for b in lane.buckets.values()] == [2.0, 2.0, 2.0]
    assert len({id(b) for b in lane.buckets.values()}) == 3, "one bucket each, not one shared"
    assert lane.breaker.reset_after == 2.5
    unlimited = Lane(app, dataclasses.replace(spec, name="kling", rate_per_second=None), partitions=3)
    assert unlimited.buckets == {}


def _lane(tmp_path: Path) -> Lane:
    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path)
    app = create_app(settings, datadir=tmp_path / "w0")
    return Lane(app, dev_setup("http://127.0.0.1:9").routing.providers["wan"], partitions=2)




def test_a_new_generation_rebuilds_the_line_from_the_waiting_table_in_offset_order(tmp_path: Path) -> None:
    """Waiting orders are acknowledged once parked: after a restart or a rebalance, the line must
    come back from the (recovered) waiting table, oldest dispatch offset first, per partition."""
    lane = _lane(tmp_path)
    for job, offset in (("c", 30), ("a", 7), ("b", 12)):
        lane.waiting.table.data[slot_key(0, job)] = Parked(_order(job), offset).encode()
    lane.waiting.table.data[slot_key(1, "other")] = Parked(_order("other"), 1).encode()
    lane.lines[0].push(_order("stale"))  # what a previous generation left: replaced, not kept
    assert lane.sync(0, generation=4)
    popped = [lane.lines[0].pop() for _ in range(3)]
    assert [o.job_id for o in popped if o is not None] == ["a", "b", "c"] and len(lane.lines[0]) == 0
    assert not lane.sync(0, generation=4), "once per generation"
    assert lane.parked(slot_key(0, "b")) == _order("b") and lane.parked(slot_key(0, "zzz")) is None
    assert lane.sync(1, generation=4) and [o.job_id for o in lane.lines[1].clear()] == ["other"]


async def test_a_start_replaces_the_waiting_entry_with_the_slot_in_one_write(tmp_path: Path) -> None:
    """Slots and waiting orders share one table under the job's key: giving a waiting order its
    slot is one changelog record (no tombstone for the waiting entry), and a restart finds the
    job holding its slot, not waiting as well."""
    lane = _lane(tmp_path)
    sent: list[tuple[bytes, bytes | None]] = []

    def send_changelog(partition: int, key: bytes, value: bytes | None, **kw: object) -> asyncio.Future[None]:
        sent.append((key, value))
        landed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        landed.set_result(None)
        return landed

    lane.entries.table.send_changelog = send_changelog  # type: ignore[method-assign,assignment]
    key = slot_key(0, "a")
    durable, _ = lane.park(0, 3, _order("a"))
    await durable
    assert lane.parked(key) == _order("a") and key not in lane.slots
    lane.slots.put_in(0, key, Slot(attempt=0, taken_at=T0, order=_order("a")))
    lane.unpark(0, key)  # the slot's entry is not a waiting one: nothing to delete
    assert [(k, v is not None) for k, v in sent] == [(key, True), (key, True)], "park, then the slot: two records"
    assert lane.parked(key) is None and lane.slots.get(key) is not None
    assert lane.sync(0, generation=1)
    assert len(lane.lines[0]) == 0 and set(lane.pools[0].held) == {"a"}
    assert len(lane.waiting) == 0 and len(lane.slots) == 1


def test_waiting_orders_of_the_former_waiting_table_move_to_the_shared_one(tmp_path: Path) -> None:
    """A worker upgraded in place finds orders parked by its predecessor in ``waiting-<provider>``:
    they come back in line, oldest first, and leave the old table."""
    lane = _lane(tmp_path)
    lane.old_waiting.table.send_changelog = lambda *a, **kw: None  # type: ignore[method-assign,assignment]
    lane.entries.table.send_changelog = lambda *a, **kw: None  # type: ignore[method-assign,assignment]
    for job, offset in (("b", 12), ("a", 7)):
        lane.old_waiting.table.data[slot_key(0, job)] = Parked(_order(job), offset).encode()
    lane.old_waiting.table.data[slot_key(1, "later")] = Parked(_order("later"), 1).encode()
    assert lane.sync(0, generation=1)
    assert [o.job_id for o in lane.lines[0].clear()] == ["a", "b"]
    assert lane.parked(slot_key(0, "a")) == _order("a")
    assert list(lane.old_waiting.table.data) == [slot_key(1, "later")], "other partitions move when synced"


def test_entries_of_partitions_owned_elsewhere_are_dropped_locally(tmp_path: Path) -> None:
    lane = _lane(tmp_path)
    for table in (lane.entries, lane.marks, lane.old_waiting):
        table.table.data[slot_key(0, "mine")] = b"{}"
        table.table.data[slot_key(1, "theirs")] = b"{}"
    assert lane.drop_unassigned({0}) == 3
    for table in (lane.entries, lane.marks, lane.old_waiting):
        assert list(table.table.data.keys()) == [slot_key(0, "mine")]


def test_the_slot_log_the_api_reads_is_the_slot_tables_changelog(tmp_path: Path) -> None:
    """The API's job view reads ``TopicNames.slot_log`` to see submissions; Faust names the table's
    changelog itself: the two must be the same topic."""
    from floodgate.topics import TopicNames

    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path,
                                                    app_id="someapp")
    lane = Lane(create_app(settings, datadir=tmp_path / "w0"), dev_setup("http://127.0.0.1:9").routing.providers["wan"],
                partitions=1)
    assert lane.entries.table.changelog_topic.get_topic_name() == TopicNames(settings).slot_log("wan")


def test_every_replayed_table_log_keeps_a_bounded_tail(tmp_path: Path) -> None:
    """A provider's tables live in memory and are replayed from their changelogs' start: each log
    is made (in the layout or by the worker) to be compacted within a minute or so and to drop its
    tombstones a minute later, not at Kafka's defaults (a 1 GiB active segment, a day's
    tombstones), where a replay reads every slot ever taken."""
    from floodgate.topics import REPLAYED_TABLE_LOG, TopicNames
    from streams.worker import changelog_layout

    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path,
                                                    app_id="someapp")
    app = create_app(settings, datadir=tmp_path / "w0")
    names = TopicNames(settings)
    layout = names.layout({"wan": 10})
    partitions = layout[names.dispatch("wan")][0]
    Lane(app, dev_setup("http://127.0.0.1:9").routing.providers["wan"], partitions=partitions)
    made = changelog_layout(app, settings, layout)
    assert set(made) == {f"someapp-{table}-wan-changelog" for table in ("cancelled", "waiting")}
    for _, (count, config) in [*made.items(), (names.slot_log("wan"), layout[names.slot_log("wan")])]:
        assert count == partitions
        assert {key: config[key] for key in REPLAYED_TABLE_LOG} == REPLAYED_TABLE_LOG
    assert REPLAYED_TABLE_LOG["cleanup.policy"] == "compact"
    assert int(REPLAYED_TABLE_LOG["segment.ms"]) <= 60_000
    assert int(REPLAYED_TABLE_LOG["delete.retention.ms"]) <= 60_000


def test_recovered_slots_are_counted_for_their_tenants(tmp_path: Path) -> None:
    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path)
    app = create_app(settings, datadir=tmp_path / "w0")
    lane = Lane(app, dev_setup("http://127.0.0.1:9").routing.providers["wan"], partitions=1)
    for job, tenant in (("j1", "acme"), ("j2", "acme"), ("j3", "zeta")):
        lane.slots.table.data[slot_key(0, job)] = _slot(job, tenant)
    lane.sync(0, generation=1)
    pool = lane.pools[0]
    assert (pool.held_by("acme"), pool.held_by("zeta")) == (2, 1)
    del lane.slots.table.data[slot_key(0, "j1")]  # a replay deleted it: the next reconcile counts again
    lane.reconcile(0)
    assert (pool.held_by("acme"), pool.held_by("zeta")) == (1, 1)


def test_a_partitions_start_rate_comes_from_its_own_slots_taken_and_given_back(tmp_path: Path) -> None:
    """The rate a partition's line reports (spillover and the backlog guard turn it into a wait):
    its share of the slots over the routing file's render time until holds are seen, then over
    that blended with the holds of its own slots; jobs started here only."""
    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path)
    app = create_app(settings, datadir=tmp_path / "w0")
    lane = Lane(app, dev_setup("http://127.0.0.1:9").routing.providers["wan"], partitions=2, configured_hold=120.0)
    share = lane.capacity(0)
    assert lane.start_rate(0, T0) == pytest.approx(share / 120.0)
    for i in range(share):
        lane.lines[0].push(_order(f"j{i}"))
    lane.lines[0].push(_order("waits"))
    for _ in range(share):
        order, fresh = lane.next_waiting(0) or (None, False)
        assert order is not None and fresh
        lane.started(0, order, T0)
    assert lane.paces[0].saturated, "the last free slot went while an order waited"
    for i in range(share):
        lane.free(0, f"j{i}", T0 + 60.0)
    # Five holds of 60 s, blended with the configured 120 s (it weighs as PRIOR_HOLDS holds).
    assert lane.start_rate(0, T0 + 61.0) == pytest.approx(share / ((PRIOR_HOLDS * 120.0 + share * 60.0)
                                                                   / (PRIOR_HOLDS + share)))
    lane.free(0, "never-started-here", T0 + 70.0)  # (a slot it recovered: no start seen, no hold)
    assert lane.paces[0].settled() == (60.0, 60.0)
    assert lane.start_rate(1, T0) == pytest.approx(lane.capacity(1) / 120.0), "each partition its own"


def test_reconcile_forgets_the_starts_of_slots_given_back_elsewhere(tmp_path: Path) -> None:
    lane = _lane(tmp_path)
    lane.lines[0].push(_order("moved-away"))
    order, _ = lane.next_waiting(0) or (None, False)
    assert order is not None
    lane.started(0, order, T0)
    lane.sync(0, generation=1)  # the table holds no slot of it: another worker freed it
    assert lane.paces[0].running == 0

