"""Place in line and ETA from the snapshots the job view sees."""
from __future__ import annotations

from typing import Any

import pytest

from floodgate.pace import PRIOR_HOLDS
from floodgate.queueboard import QueueBoard, Standing, update_due
from floodgate.routing import Spillover

T0 = 1_800_000_000.0


def snap(job_id: str, status: str = "queued", *, provider: str | None = "kling", tenant: str = "a",
         priority: str | None = None, created: float = 0.0, updated: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"job_id": job_id, "status": status, "provider": provider, "tenant": tenant,
                           "created_at": int((T0 + created) * 1000),
                           "updated_at": int((T0 + (created if updated is None else updated)) * 1000)}
    if priority:
        out["priority"] = priority
    return out


def board(**kw: Any) -> QueueBoard:
    return QueueBoard({"kling": 10, "wan": 5}, **kw)


def test_positions_follow_acceptance_order_and_move_up_as_jobs_leave() -> None:
    b = board()
    for i in range(5):
        b.observe(snap(f"j{i}", created=i), T0 + i)
    assert [b.position(f"j{i}") for i in range(5)] == [0, 1, 2, 3, 4]
    b.observe(snap("j0", "submitted", created=0, updated=10), T0 + 10)
    b.observe(snap("j1", "cancelled", created=1, updated=10), T0 + 10)
    assert b.position("j0") is None and [b.position(f"j{i}") for i in (2, 3, 4)] == [0, 1, 2]
    assert b.queued_at("kling") == 3 and b.queued_at("wan") == 0


def test_a_tenant_behind_a_burst_gets_a_fair_place_and_high_goes_first() -> None:
    b = board()
    for i in range(1000):
        b.observe(snap(f"a{i}", tenant="a", created=i / 1000), T0 + 1)
    b.observe(snap("b0", tenant="b", created=2), T0 + 2)
    b.observe(snap("vip", tenant="c", priority="high", created=3), T0 + 3)
    assert b.position("vip") == 0
    assert b.position("b0") == 1  # behind vip, and level with a's head
    assert b.position("a999") == 1000 + 1


def test_a_tenant_holding_no_slot_is_placed_ahead_until_it_would_hold_its_share() -> None:
    b = board()
    for i in range(40):
        b.observe(snap(f"a{i}", tenant="a", created=i / 100), T0 + 1)
    for i in range(10):  # a's first ten take kling's 10 slots
        b.observe(snap(f"a{i}", "submitted", tenant="a", created=i / 100, updated=2), T0 + 2)
    for j in range(8):
        b.observe(snap(f"b{j}", tenant="b", created=3 + j / 100), T0 + 3)
    # b holds none of kling's slots, a all ten: b's first five take the next five that free.
    assert [b.position(f"b{j}") for j in range(5)] == [0, 1, 2, 3, 4]
    assert b.position("a10") == 5
    for i in range(5):  # five of a's jobs end, and b's first five start
        b.observe(snap(f"a{i}", "completed", tenant="a", created=i / 100, updated=4), T0 + 4)
        b.observe(snap(f"b{i}", "submitted", tenant="b", created=3 + i / 100, updated=4), T0 + 4)
    # Each holds five now: turns about (the heads tie; each counts the other's as half a turn).
    assert (b.position("b5"), b.position("a10"), b.position("b6"), b.position("a11")) == (0, 0, 2, 2)


def test_a_rerouted_job_moves_to_its_new_providers_line() -> None:
    b = board()
    b.observe(snap("x", provider="kling"), T0)
    b.observe(snap("y", provider="wan", created=1), T0)
    b.observe(snap("x", provider="wan", updated=5), T0 + 5)
    assert b.queued_at("kling") == 0 and b.position("x") == 0 and b.position("y") == 1


def test_eta_from_capacity_until_starts_are_seen_then_from_the_observed_rate() -> None:
    b = board(configured_render={"kling": 20.0})
    for i in range(30):
        b.observe(snap(f"j{i}", created=i / 100), T0)
    # No start seen yet: 10 slots / 20 s = 0.5 starts/s; 11th in line → 22 s; ready 20 s later.
    assert b.standing(snap("j10", created=0.1), T0) == Standing(10, 22.0, 42.0)
    for i in range(10):  # the ten free slots fill at once: that is not the pace of the line
        b.observe(snap(f"j{i}", "submitted", created=i / 100, updated=1), T0 + 1)
    assert b.start_rate("kling", T0 + 1) == pytest.approx(0.5)
    for i in range(11):  # then a job ends and the next takes its slot, eleven times from 1.5 s to 6.5 s
        b.observe(snap(f"j{i}", "completed", created=i / 100, updated=1.5 + i * 0.5), T0 + 6.5)
        b.observe(snap(f"j{i + 10}", "submitted", created=(i + 10) / 100, updated=1.5 + i * 0.5), T0 + 6.5)
    standing = b.standing(snap("j29", created=0.29), T0 + 6.5)
    assert standing.queue_position == 8
    # One start per 0.5 s: the ten after the first of them (its wait since the slots filled says
    # nothing of the pace) over the 5 s they took, a full round of kling's ten slots.
    assert standing.eta_seconds == pytest.approx(9 / 2.0, abs=0.1)


def test_a_burst_after_a_quiet_minute_is_timed_by_capacity_not_by_the_quiet_starts() -> None:
    """The spike bench found a burst's ETAs 75% too long: a quiet minute's starts (one job every
    10 s, each into a free slot) were read as the line's pace, 0.1 starts/s against a capacity of
    0.5. Starts into free slots say how fast jobs came, not how fast a waiting line moves."""
    b = board(configured_render={"kling": 20.0})
    for k in range(6):
        t = k * 10.0
        b.observe(snap(f"q{k}", created=t), T0 + t)
        b.observe(snap(f"q{k}", "submitted", created=t, updated=t), T0 + t)
        if k >= 2:
            b.observe(snap(f"q{k - 2}", "completed", created=t - 20, updated=t), T0 + t)
    for i in range(100):  # the burst: the eight free slots fill, ninety-two wait
        b.observe(snap(f"b{i}", created=60 + i / 1000), T0 + 60)
    for i in range(8):
        b.observe(snap(f"b{i}", "submitted", created=60 + i / 1000, updated=60.5), T0 + 60.5)
    assert b.start_rate("kling", T0 + 61) == pytest.approx(10 / 20.0)
    assert b.standing(snap("b8", created=60.008), T0 + 61).eta_seconds == pytest.approx(2.0)


def test_every_start_counts_while_the_provider_stays_saturated() -> None:
    """Two jobs ending before either freed slot is taken again must not lose a start: the spike
    bench found ETAs 35% too long when only starts into the last free slot counted."""
    b = board(configured_render={"kling": 20.0})
    for i in range(50):
        b.observe(snap(f"j{i}", created=i / 100), T0)
    for i in range(10):
        b.observe(snap(f"j{i}", "submitted", created=i / 100, updated=1), T0 + 1)
    ended, nxt = 0, 10
    for second in range(2, 12):  # every second, two jobs end, then two start
        for _ in range(2):
            b.observe(snap(f"j{ended}", "completed", created=ended / 100, updated=second), T0 + second)
            ended += 1
        for _ in range(2):
            b.observe(snap(f"j{nxt}", "submitted", created=nxt / 100, updated=second + 0.1), T0 + second)
            nxt += 1
    # Twenty starts after the one that filled the last slot (at 1 s), read half a second after
    # the last: the nineteen after the first of them, over the 9 s they took (a start counts over
    # the time since the previous one); nothing was heard since the last, so no gap is open.
    assert b.start_rate("kling", T0 + 11.6) == pytest.approx(19 / 9.0)


def test_a_line_stands_still_by_what_the_board_heard_since_not_by_the_clock() -> None:
    """A view whose feed runs behind hears nothing for a while: its own lag is not a line that
    stopped (the spike bench's ETAs of those seconds were up to 1.45× too long). Once it hears
    of later changes elsewhere and still no start here, the line has stood still that long."""
    b = board()
    for i in range(40):
        b.observe(snap(f"j{i}", created=i / 100), T0)
    for i in range(10):
        b.observe(snap(f"j{i}", "submitted", created=i / 100, updated=1), T0 + 1)
    for k in range(11):  # one start a second from 2 s to 12 s
        b.observe(snap(f"j{k}", "completed", created=k / 100, updated=2 + k), T0 + 2 + k)
        b.observe(snap(f"j{k + 10}", "submitted", created=(k + 10) / 100, updated=2 + k), T0 + 2 + k)
    assert b.start_rate("kling", T0 + 22) == pytest.approx(1.0), "ten s of clock, nothing heard: not a stall"
    b.observe(snap("w0", "submitted", provider="wan", updated=22), T0 + 22)  # wan moved at 22 s
    assert b.start_rate("kling", T0 + 22) == pytest.approx(10 / 20), "ten starts over 10 s and 10 s since"


def test_the_wait_for_a_bursts_first_end_is_not_the_pace_of_the_line() -> None:
    """The spike bench's first ETAs were up to twice too long: the slots filled at once, nothing
    ended for the renders' shortest time, and that wait counted as if the line had been moving."""
    b = board()
    for i in range(100):
        b.observe(snap(f"j{i}", created=i / 1000), T0)
    for i in range(10):
        b.observe(snap(f"j{i}", "submitted", created=i / 1000, updated=0.1), T0 + 0.1)
    for k in range(11):  # nothing ends for 50 s; then one start a second
        b.observe(snap(f"j{k}", "completed", created=k / 1000, updated=50 + k), T0 + 50 + k)
        b.observe(snap(f"j{k + 10}", "submitted", created=(k + 10) / 1000, updated=50 + k), T0 + 50 + k)
    assert b.start_rate("kling", T0 + 60) == pytest.approx(1.0)


def test_a_quiet_spell_between_two_saturated_spells_does_not_slow_the_rate() -> None:
    b = board()
    at, n = 0.0, 0
    for spell in range(2):
        first = n
        for i in range(20):
            b.observe(snap(f"j{n + i}", created=at + i / 1000), T0 + at)
        for i in range(10):
            b.observe(snap(f"j{n + i}", "submitted", created=at, updated=at), T0 + at)
        for k in range(10):  # a start every 0.5 s while the other ten wait
            at += 0.5
            b.observe(snap(f"j{first + k}", "completed", created=0, updated=at), T0 + at)
            b.observe(snap(f"j{first + 10 + k}", "submitted", created=0, updated=at), T0 + at)
        for k in range(10):  # the line is empty: the rest end, and all is quiet for five minutes
            b.observe(snap(f"j{first + 10 + k}", "completed", created=0, updated=at), T0 + at)
        n += 20
        at += 300.0 if spell == 0 else 0.0
    assert b.start_rate("kling", T0 + at) == pytest.approx(2.0)


def test_the_start_rate_forgets_a_slow_beginning_once_the_slots_turned_over_twice() -> None:
    """A window in seconds kept a drain's slow first minute (cold starts, the first renders all
    still running) in its rate for a minute, whatever the render times: ETAs came out too long."""
    b = board()
    for i in range(300):
        b.observe(snap(f"j{i}", created=i / 1000), T0)
    for i in range(10):
        b.observe(snap(f"j{i}", "submitted", created=i / 1000, updated=0.5), T0 + 0.5)
    ended, nxt, at = 0, 10, 0.5
    for step in range(110):  # slow at first (one start per 2 s), then one per 0.2 s
        at += 2.0 if step < 10 else 0.2
        b.observe(snap(f"j{ended}", "completed", created=ended / 1000, updated=at), T0 + at)
        b.observe(snap(f"j{nxt}", "submitted", created=nxt / 1000, updated=at), T0 + at)
        ended, nxt = ended + 1, nxt + 1
    assert b.start_rate("kling", T0 + at + 0.1) == pytest.approx(5.0, rel=0.05)


def test_a_few_quick_starts_move_the_rate_only_as_far_as_the_round_they_cover() -> None:
    """In the spike bench the first five starts after a busy worker caught up came 0.12 s apart,
    against a pace of 0.21 s: taken alone they made the ETAs of that moment 40% too short. Until a
    round of the slots has been seen, the observed pace is blended with the capacity estimate."""
    b = board(configured_render={"kling": 10.0})  # capacity: 10 slots / 10 s = 1 start a second
    for i in range(40):
        b.observe(snap(f"j{i}", created=i / 1000), T0)
    for i in range(10):
        b.observe(snap(f"j{i}", "submitted", created=i / 1000, updated=0), T0)

    def start(k: int, at: float) -> None:
        b.observe(snap(f"j{k}", "completed", created=k / 1000, updated=at), T0 + at)
        b.observe(snap(f"j{k + 10}", "submitted", created=(k + 10) / 1000, updated=at), T0 + at)

    for k in range(6):  # the first after the slots filled, then five 0.25 s apart
        start(k, 10 + k * 0.25)
    # Five of a round of ten seen: halfway from 1 s per start to 0.25 s, 0.625 s.
    assert b.start_rate("kling", T0 + 11.25) == pytest.approx(1 / 0.625)
    for k in range(6, 11):
        start(k, 10 + k * 0.25)
    assert b.start_rate("kling", T0 + 12.5) == pytest.approx(4.0)  # a round seen: the pace itself


def test_render_time_counts_settled_renders_not_the_short_ones_a_burst_ends_first() -> None:
    """After a burst fills the slots, the first renders to end are the short ones. Their median
    made the spike bench's capacity estimate three times too fast; only renders of jobs that
    started before every job still running count."""
    b = board()
    for k, render in enumerate((40.0, 60.0)):  # two jobs before the burst, both ended
        b.observe(snap(f"early{k}", created=-100), T0 - 100)
        b.observe(snap(f"early{k}", "submitted", created=-100, updated=-100), T0 - 100)
        b.observe(snap(f"early{k}", "completed", created=-100, updated=-100 + render), T0 - 100 + render)
    for i in range(10):  # the burst's ten start at 0; renders of 1 s, 2 s, ... 10 s
        b.observe(snap(f"j{i}", created=0), T0)
        b.observe(snap(f"j{i}", "submitted", created=0, updated=0), T0)
    for i in range(3):
        b.observe(snap(f"j{i}", "completed", created=0, updated=i + 1), T0 + i + 1)
    assert b.render_time("kling", T0 + 3.5) == 50.0  # not 3 s, the median of 1, 2, 3, 40, 60
    for i in range(3, 10):
        b.observe(snap(f"j{i}", "completed", created=0, updated=i + 1), T0 + i + 1)
    assert b.render_time("kling", T0 + 10) == 6.5  # all ended: every one of the twelve is settled


def test_capacity_is_the_slots_over_the_mean_render_and_a_job_is_told_the_median() -> None:
    b = board()
    for i, render in enumerate((10.0, 10.0, 10.0, 10.0, 60.0)):  # one slow render in five
        b.observe(snap(f"r{i}", created=0), T0)
        b.observe(snap(f"r{i}", "submitted", created=0, updated=0), T0)
        b.observe(snap(f"r{i}", "completed", created=0, updated=render), T0 + render)
    assert b.render_time("kling", T0 + 60) == 10.0 and b.hold_time("kling", T0 + 60) == 20.0
    # 10 slots each held 20 s on average: half a start a second, not the one the median says
    assert b.start_rate("kling", T0 + 60) == pytest.approx(0.5)
    b.observe(snap("w", created=61), T0 + 61)
    assert b.standing(snap("w", created=61), T0 + 61) == Standing(0, 2.0, 12.0)


def test_with_nothing_settled_the_render_time_is_configured_else_a_floor() -> None:
    for configured, expected in ((None, 3.5), (20.0, 20.0)):
        b = board(configured_render={"kling": configured} if configured else None)
        for i in range(10):
            b.observe(snap(f"j{i}", created=0), T0)
            b.observe(snap(f"j{i}", "submitted", created=0, updated=0), T0)
        for i in range(3):
            b.observe(snap(f"j{i}", "completed", created=0, updated=i + 1), T0 + i + 1)
        # the floor: 1, 2, 3 ended and seven running for 3.5 s
        assert b.render_time("kling", T0 + 3.5) == expected
        assert b.render_time("kling") == (2.0 if configured is None else configured)


def test_render_time_is_measured_from_start_to_completion() -> None:
    b = board(configured_render={"wan": 99.0})
    b.observe(snap("j", provider="wan"), T0)
    b.observe(snap("j", "submitted", provider="wan", updated=10), T0 + 10)
    assert b.standing(snap("j", "running", provider="wan", updated=12), T0 + 12).eta_ready_seconds == 97.0
    b.observe(snap("j", "completed", provider="wan", updated=40), T0 + 40)
    assert b.render_time("wan") == pytest.approx((PRIOR_HOLDS * 99.0 + 30.0) / (PRIOR_HOLDS + 1)), \
        "one render seen moves the configured figure a little"
    assert b.standing(snap("j", "completed", provider="wan"), T0 + 40) == Standing()
    unconfigured = board()
    for what, at in (("queued", 0), ("submitted", 10), ("completed", 40)):
        unconfigured.observe(snap("j", what, provider="wan", updated=at), T0 + at)
    assert unconfigured.render_time("wan") == 30.0


def test_catching_up_on_old_snapshots_does_not_count_as_starts_now() -> None:
    b = board()
    for i in range(50):
        b.observe(snap(f"j{i}", created=0), T0 + 3600)
        b.observe(snap(f"j{i}", "submitted", created=0, updated=1), T0 + 3600)
    b.observe(snap("new", created=3600), T0 + 3600)
    assert b.start_rate("kling", T0 + 3600) is None  # an hour-old burst says nothing of today's rate
    assert b.standing(snap("new", created=3600), T0 + 3600) == Standing(0, None, None)


def test_jobs_without_a_provider_yet_have_no_place() -> None:
    b = board()
    b.observe(snap("j", provider=None), T0)
    assert len(b) == 0 and b.standing(snap("j", provider=None), T0) == Standing()


def test_jobs_accepted_here_but_not_admitted_yet_wait_where_their_model_is_routed() -> None:
    # Under a burst, admission runs seconds behind the 202s: the jobs it has not read yet are
    # still ahead of later ones, and a place that left them out was far too short.
    b = board(route={"kling-2.1": "kling"}.get)
    b.observe(snap("early", provider=None, created=0) | {"model": "kling-2.1"}, T0)
    b.observe(snap("late", created=1), T0 + 1)  # admitted first
    b.observe(snap("nowhere", provider=None, created=2) | {"model": "unknown"}, T0 + 2)
    assert b.position("early") == 0 and b.position("late") == 1 and b.position("nowhere") is None
    assert b.standing(snap("early", provider=None) | {"model": "kling-2.1"}, T0 + 2).queue_position == 0
    b.observe(snap("early", provider="wan", created=0, updated=3), T0 + 3)  # admission chose otherwise
    assert b.position("late") == 0 and b.queued_at("wan") == 1


def test_updates_come_every_five_percent_or_five_seconds_and_never_for_nothing() -> None:
    assert update_due(None, 100, T0)
    assert not update_due((100, T0), 100, T0 + 60), "same place: nothing to say"
    assert not update_due((100, T0), 97, T0 + 1)
    assert update_due((100, T0), 95, T0 + 1)
    assert update_due((100, T0), 99, T0 + 5)
    assert update_due((3, T0), 2, T0 + 0.1), "near the head every step counts"


SPILL = {"kling-2.1": Spillover(("wan-2.6",), 10.0), "sora-2": Spillover(("wan-2.6",), 10.0)}
ROUTE = {"kling-2.1": "kling", "sora-2": "kling", "wan-2.6": "wan"}.get


def spill_board(spillover: Any = SPILL) -> QueueBoard:
    """Two providers of 10 slots, renders of 1 s configured: each starts 10 jobs a second."""
    return QueueBoard({"kling": 10, "wan": 10}, configured_render={"kling": 1.0, "wan": 1.0}, route=ROUTE,
                      spillover=spillover)


def fill(b: QueueBoard, wan_first: int, kling: int, wan_after: int) -> None:
    """``wan_first`` wan-2.6 jobs accepted, then ``kling`` kling-2.1 jobs, then ``wan_after`` more wan-2.6."""
    at = 0.0
    for provider, model, count, name in (("wan", "wan-2.6", wan_first, "w"), ("kling", "kling-2.1", kling, "k"),
                                          ("wan", "wan-2.6", wan_after, "v")):
        for i in range(count):
            at += 0.001
            b.observe({**snap(f"{name}{i}", provider=provider, created=at), "model": model}, T0)


def eta(b: QueueBoard, job_id: str, provider: str, model: str, **extra: Any) -> float | None:
    return b.standing({"job_id": job_id, "status": "queued", "provider": provider, "model": model, **extra},
                      T0).eta_seconds


def test_a_job_that_may_spill_is_told_the_pooled_line_not_its_own_providers_alone() -> None:
    b = spill_board()
    fill(b, 100, 300, 0)
    assert b.start_rate("kling", T0) == b.start_rate("wan", T0) == 10.0
    # The last kling job: 300 places at 10/s alone is 30 s; pooled with wan's 100 accepted before
    # it, 400 places at 20/s.
    assert b.position("k299") == 299 and eta(b, "k299", "kling", "kling-2.1") == 20.0
    plain = spill_board(spillover={})
    fill(plain, 100, 300, 0)
    assert eta(plain, "k299", "kling", "kling-2.1") == 30.0
    # Behind the whole of wan's line, those accepted after it too: they start before wan has room.
    later = spill_board()
    fill(later, 0, 300, 100)
    assert eta(later, "k299", "kling", "kling-2.1") == 20.0
    # Within max_wait_s it does not move: its own line's pace.
    assert eta(b, "k50", "kling", "kling-2.1") == 5.1
    # A job already moved (or served by another model) does not move again.
    assert eta(b, "k299", "kling", "kling-2.1", serving_model="other-1") == 30.0


def test_a_job_at_the_equivalent_is_told_its_own_lines_pace() -> None:
    """Counting the long line's jobs that may move in ahead of it told it far too long (the spike
    bench, where they move only as its line runs short)."""
    b = spill_board()
    fill(b, 99, 300, 1)
    assert b.position("v0") == 99 and eta(b, "v0", "wan", "wan-2.6") == 10.0


def test_a_job_that_moved_joins_the_equivalents_line_at_the_back_and_pushes_no_one_there_back() -> None:
    b = spill_board()
    fill(b, 0, 300, 100)  # kling's 300, then wan's own 100, all accepted after them
    assert b.position("v99") == 99
    moved = {**snap("k0", provider="wan", created=0.001, updated=1.0), "model": "kling-2.1",
             "serving_model": "wan-2.6", "attempt": 1, "lined_at": int((T0 + 1.0) * 1000)}
    b.observe(moved, T0 + 1)
    # Accepted before every wan job, but it joined wan's line after them: last there, as the
    # dispatcher puts its order; wan's own jobs keep the places (and ETAs) they were told.
    assert b.position("k0") == 100 and b.position("v99") == 99 and b.position("v0") == 0
    assert b.position("k1") == 0 and b.queued_at("kling") == 299


def test_a_short_long_line_moves_nothing_and_one_provider_for_both_models_pools_nothing() -> None:
    b = spill_board()
    fill(b, 99, 100, 1)  # kling's 100 all start there within max_wait_s
    assert eta(b, "v0", "wan", "wan-2.6") == 10.0 and eta(b, "k99", "kling", "kling-2.1") == 10.0
    same = spill_board(spillover={"kling-2.1": Spillover(("sora-2",), 10.0)})  # sora-2 is at kling too
    fill(same, 0, 300, 0)
    assert eta(same, "k299", "kling", "kling-2.1") == 30.0


def test_the_apis_board_takes_the_routing_files_spillover_rules_and_routes() -> None:
    from floodgate.api.server import queue_board
    from floodgate.provider_config import dev_table, from_dict
    from floodgate.settings import Settings

    spill = {"kling-2.1": {"equivalents": ["wan-2.6"], "max_wait_s": 10}}
    setup = from_dict(dev_table("http://127.0.0.1:9", spillover=spill))
    b = queue_board(Settings.from_env({}), setup, {"kling": 10, "wan": 10})
    assert set(b.spillover) == {"kling-2.1"} and b.route is not None
    assert b.route("kling-2.1") == "kling" and b.route("sora-2") == "kling"  # sora is retired
    assert not queue_board(Settings.from_env({}), from_dict(dev_table("http://127.0.0.1:9")), {"kling": 10}).spillover
