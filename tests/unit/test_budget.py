"""The residency plan: concrete cases, then invariants over random rounds of demand."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.config import PoolConfig
from pool.control.budget import (
    Demand,
    Placement,
    Plan,
    Resident,
    VramLedger,
    apply_plan,
    plan,
    served_order,
)

# 1000 MiB limit, 100 MiB base: 900 MiB for agents per GPU.
LEDGER = VramLedger(budget_mib=1000, watermark=1.0, base_mib=100, num_gpus=1, slots_per_gpu=3)


def res(
    agent_id: str,
    *,
    gpu: int = 0,
    priority: int = 5,
    last_used: float = 0.0,
    mib: int = 100,
    busy: bool = False,
    wanted: bool = False,
) -> Resident:
    return Resident(agent_id, gpu, priority, last_used, mib, busy, wanted)


def dem(agent_id: str, priority: int = 5, mib: int = 100) -> Demand:
    return Demand(agent_id, priority, mib)


def test_ledger_from_config_and_arithmetic() -> None:
    ledger = VramLedger.from_config(PoolConfig())
    assert ledger == VramLedger(8192, 0.85, 600, 1, 12, agent_mib=320)
    assert ledger.limit_mib == pytest.approx(6963.2)
    residents = [res("a", mib=320), res("b", gpu=1, mib=999)]
    assert ledger.used(residents, 0) == 920
    assert ledger.headroom([], 0) == pytest.approx(1 - 600 / 6963.2)
    over = VramLedger(1000, 1.0, 900, 1, 3)
    assert over.headroom([res("a", mib=200)], 0) == pytest.approx(-0.1)


def test_fills_free_slots_first() -> None:
    residents = [res("idle", priority=0)]
    p = plan(residents, [dem("x"), dem("y")], LEDGER)
    assert p == Plan(activate=(Placement("x", 0), Placement("y", 0)), park=(), deferred=())


def test_serves_highest_priority_first_stable_within_priority() -> None:
    demand = [dem("low1", 1), dem("hi1", 9), dem("low2", 1), dem("hi2", 9)]
    assert [d.agent_id for d in served_order(demand)] == ["hi1", "hi2", "low1", "low2"]
    one_slot = VramLedger(1000, 1.0, 100, 1, 1)
    p = plan([], demand, one_slot)
    assert p.activate == (Placement("hi1", 0),)
    assert p.deferred == ("hi2", "low1", "low2")


def test_already_resident_and_repeated_demand_are_ignored() -> None:
    p = plan([res("a")], [dem("a"), dem("b"), dem("b", 1)], LEDGER)
    assert p == Plan(activate=(Placement("b", 0),), park=(), deferred=())


def test_evicts_idle_lowest_priority_lru() -> None:
    residents = [
        res("wanted_low", priority=0, last_used=1.0, wanted=True),
        res("idle_old_p3", priority=3, last_used=1.0),
        res("idle_new_p3", priority=3, last_used=5.0),
    ]
    full = plan(residents, [dem("x", 5)], LEDGER)
    assert full.park == ("idle_old_p3",)
    assert full.activate == (Placement("x", 0),)
    two = plan(residents, [dem("x", 5), dem("y", 5)], LEDGER)
    assert two.park == ("idle_old_p3", "idle_new_p3")


def test_idle_goes_before_wanted_even_of_higher_priority() -> None:
    residents = [res("w", priority=0, wanted=True), res("i", priority=9), res("b", busy=True)]
    assert plan(residents, [dem("x", 5)], LEDGER).park == ("i",)


def test_never_parks_busy() -> None:
    residents = [res(f"b{i}", priority=0, busy=True) for i in range(3)]
    p = plan(residents, [dem("x", 9)], LEDGER)
    assert p == Plan(activate=(), park=(), deferred=("x",))


def test_respects_priority_of_wanted_residents() -> None:
    residents = [res(f"w{i}", priority=7, wanted=True) for i in range(3)]
    assert plan(residents, [dem("x", 6)], LEDGER).deferred == ("x",)
    # Equal priority may take a turn: the least recently used wanted resident yields.
    residents[1] = res("w1", priority=7, wanted=True, last_used=-1.0)
    assert plan(residents, [dem("x", 7)], LEDGER).park == ("w1",)
    assert plan(residents, [dem("x", 8)], LEDGER).park == ("w1",)


def test_parks_to_make_memory_room_not_only_slots() -> None:
    residents = [res("a", mib=400, last_used=1.0), res("b", mib=400, last_used=2.0)]
    p = plan(residents, [dem("x", mib=500)], LEDGER)
    assert p.park == ("a",)
    assert p.activate == (Placement("x", 0),)


def test_does_not_park_more_than_needed() -> None:
    # In eviction order "small" goes first but does not make room; "big" alone does.
    residents = [res("small", priority=0, mib=100), res("big", priority=1, mib=700)]
    p = plan(residents, [dem("x", mib=600)], LEDGER)
    assert p.park == ("big",)


def test_spreads_over_gpus_by_headroom() -> None:
    ledger = VramLedger(1000, 1.0, 100, num_gpus=3, slots_per_gpu=3)
    residents = [res("a", gpu=0, mib=300), res("b", gpu=1, mib=100), res("c", gpu=2, mib=200)]
    p = plan(residents, [dem("x", mib=50), dem("y", mib=50), dem("z", mib=50)], ledger)
    # Used 400/200/300: x and y go to gpu1 (most headroom); then gpu1's slots are full and
    # gpu2 (300) beats gpu0 (400).
    assert p.activate == (Placement("x", 1), Placement("y", 1), Placement("z", 2))
    p = plan(residents, [dem("x", mib=150), dem("y", mib=150)], ledger)
    assert p.activate == (Placement("x", 1), Placement("y", 2))


def test_free_gpu_preferred_over_parking_and_lowest_index_on_ties() -> None:
    ledger = VramLedger(1000, 1.0, 100, num_gpus=2, slots_per_gpu=1)
    p = plan([res("a", gpu=0, priority=0)], [dem("x")], ledger)
    assert p == Plan(activate=(Placement("x", 1),), park=(), deferred=())
    p = plan([], [dem("x"), dem("y")], ledger)
    assert p.activate == (Placement("x", 0), Placement("y", 1))


def test_parks_on_the_gpu_where_it_costs_least() -> None:
    ledger = VramLedger(1000, 1.0, 100, num_gpus=2, slots_per_gpu=1)
    residents = [res("w", gpu=0, priority=0, wanted=True), res("i", gpu=1, priority=8)]
    assert plan(residents, [dem("x", 9)], ledger).park == ("i",)


def test_measured_extra_counts_as_used() -> None:
    ledger = LEDGER.with_extra(0, 850)
    residents = [res("a", mib=100)]
    assert ledger.accounted(residents, 0) == 200
    assert ledger.used(residents, 0) == 1050
    assert ledger.headroom(residents, 0) == pytest.approx(-0.05)
    assert ledger.over_limit(residents, 0) and not ledger.with_extra(0, 800).over_limit(residents, 0)
    assert ledger.with_extra(0, -30).extra(0) == 0  # measured below the ledger: nothing extra


def test_sheds_idle_residents_of_a_gpu_over_its_limit_in_eviction_order() -> None:
    ledger = replace(LEDGER, slots_per_gpu=4).with_extra(0, 500)  # used 100+500+400 = 1000
    residents = [res("busy", busy=True), res("wanted", wanted=True, priority=0),
                 res("old", last_used=1.0), res("new", last_used=2.0)]
    ledger = ledger.with_extra(0, 650)  # 1150: two of the idle ones must go
    p = plan(residents, [], ledger)
    assert p.shed == ("old", "new") and p.park == ("old", "new") and not p.activate
    assert plan(residents, [], ledger.with_extra(0, 500)).park == ()  # exactly at the limit


def test_shedding_stops_at_busy_residents_and_nothing_is_placed_there() -> None:
    ledger = VramLedger(1000, 1.0, 100, num_gpus=2, slots_per_gpu=3).with_extra(0, 900)
    p = plan([res("b", busy=True), res("i")], [dem("x")], ledger)
    assert p.shed == ("i",) and p.activate == (Placement("x", 1),)


def test_a_gpu_over_its_limit_takes_no_one_in_the_plan_that_sheds_it() -> None:
    # The pool counts memory freed by shedding only once a new reading shows it, so a GPU over
    # its limit must not take an agent back in the same plan (it would be shed again: churn).
    ledger = VramLedger(1000, 1.0, 100, num_gpus=2, slots_per_gpu=2).with_extra(0, 750)  # 1050
    residents = [res("i1", last_used=1.0), res("i2", last_used=2.0),
                 res("b1", gpu=1, busy=True), res("b2", gpu=1, busy=True)]
    p = plan(residents, [dem("x"), Demand("m", 5, 100, avoid_gpu=0)], ledger)
    assert p.shed == p.park == ("i1",) and not p.activate and set(p.deferred) == {"x", "m"}


def test_a_migration_off_a_pressed_gpu_goes_elsewhere_even_by_parking() -> None:
    ledger = VramLedger(1000, 1.0, 100, num_gpus=2, slots_per_gpu=2)
    moving = Demand("m", 5, 100, avoid_gpu=0)
    # Its own GPU has a free slot and the most headroom; the other must park one to take it.
    residents = [res("a", gpu=1), res("b", gpu=1, mib=50)]
    p = plan(residents, [moving], ledger)
    assert p.activate == (Placement("m", 1),) and len(p.park) == 1
    # Nowhere else to go (the other GPU is busy): its own GPU after all, not a deferral.
    busy = [res("a", gpu=1, busy=True), res("b", gpu=1, busy=True)]
    assert plan(busy, [moving], ledger).activate == (Placement("m", 0),)


def test_deferral_when_everything_is_busy() -> None:
    ledger = VramLedger(1000, 1.0, 100, num_gpus=2, slots_per_gpu=2)
    residents = [res(f"b{i}", gpu=i % 2, busy=True) for i in range(4)]
    p = plan(residents, [dem("x", 9), dem("y", 0)], ledger)
    assert p == Plan(activate=(), park=(), deferred=("x", "y"))


def test_oversize_footprint_deferred_without_parking() -> None:
    residents = [res("i", priority=0)]
    p = plan(residents, [dem("huge", 9, mib=901), dem("ok", 0, mib=800)], LEDGER)
    assert p.deferred == ("huge",)
    assert p.activate == (Placement("ok", 0),)
    assert p.park == ()


def test_agent_activated_in_plan_is_not_parked_for_a_later_demand() -> None:
    one_slot = VramLedger(1000, 1.0, 100, 1, 1)
    p = plan([], [dem("x", 0), dem("y", 9)], one_slot)
    assert p == Plan(activate=(Placement("y", 0),), park=(), deferred=("x",))
    p = plan([], [dem("x", 9), dem("y", 9)], one_slot)
    assert p == Plan(activate=(Placement("x", 0),), park=(), deferred=("y",))


def test_apply_plan_folds_parks_and_activations() -> None:
    residents = (res("a", priority=0, last_used=1.0), res("b", busy=True))
    demand = [dem("x", 4, mib=250)]
    p = plan(residents, demand, VramLedger(1000, 1.0, 100, 1, 2))
    assert p.park == ("a",)
    after = apply_plan(residents, p, demand, now=42.0)
    assert after == (
        res("b", busy=True),
        res("x", priority=4, last_used=42.0, mib=250, wanted=True),
    )


def test_apply_plan_rejects_a_plan_that_does_not_match() -> None:
    with pytest.raises(ValueError, match="not resident"):
        apply_plan([], Plan((), ("ghost",), ()), [], now=0.0)
    with pytest.raises(ValueError, match="without a demand"):
        apply_plan([], Plan((Placement("ghost", 0),), (), ()), [], now=0.0)




# ---- properties over random rounds --------------------------------------------------------

AGENTS = [f"a{i}" for i in range(24)]


@st.composite
def ledgers(draw: st.DrawFn) -> VramLedger:
    budget = draw(st.integers(64, 4096))
    watermark = draw(st.floats(0.1, 1.0))
    gpus = draw(st.integers(1, 3))
    return VramLedger(
        budget_mib=budget,
        watermark=watermark,
        # An engine base over the limit leaves no GPU valid even when empty: a bad config.
        base_mib=draw(st.integers(0, int(budget * watermark))),
        num_gpus=gpus,
        slots_per_gpu=draw(st.integers(1, 5)),
    )


def measured(ledger: VramLedger) -> st.SearchStrategy[VramLedger]:
    """The ledger after a reconciliation found some GPUs holding more than it accounts for."""
    extra = st.lists(st.integers(0, ledger.budget_mib), min_size=ledger.num_gpus,
                     max_size=ledger.num_gpus)
    return extra.map(lambda e: replace(ledger, extra_mib=tuple(e)))


def demands(budget: int) -> st.SearchStrategy[list[Demand]]:
    one = st.builds(
        Demand,
        agent_id=st.sampled_from(AGENTS),
        priority=st.integers(0, 9),
        footprint_mib=st.integers(0, budget // 2),
        avoid_gpu=st.none() | st.integers(0, 2),
    )
    return st.lists(one, max_size=10)


def check_invariants(
    before: tuple[Resident, ...], demand: list[Demand], p: Plan, ledger: VramLedger
) -> tuple[Resident, ...]:
    by_id = {r.agent_id: r for r in before}
    activated = [a.agent_id for a in p.activate]
    # Parked agents were resident and not busy; nothing is both activated and parked.
    assert all(a in by_id and not by_id[a].busy for a in p.park)
    assert not set(activated) & set(p.park)
    assert len(set(p.park)) == len(p.park)
    assert set(p.shed) <= set(p.park)
    # Parking serves an activation, or brings a GPU over its limit back within it.
    assert set(p.park) <= set(p.shed) or p.activate
    for a in p.shed:
        assert ledger.used(before, by_id[a].gpu) > ledger.limit_mib and by_id[a].footprint_mib
    # Each demand for a dormant agent is either activated or deferred, exactly once.
    dormant = [d.agent_id for d in served_order(demand) if d.agent_id not in by_id]
    assert sorted(activated + list(p.deferred)) == sorted(dormant)
    # A wanted resident is parked only for a demand at least as important as itself.
    top = max((d.priority for d in demand if d.agent_id in activated), default=-1)
    assert all(by_id[a].priority <= top for a in p.park if by_id[a].wanted and a not in p.shed)

    after = apply_plan(before, p, demand, now=0.0)
    assert all(n == 1 for n in Counter(r.agent_id for r in after).values())
    placed = {a.agent_id: a.gpu for a in p.activate}
    for gpu in range(ledger.num_gpus):
        assert sum(r.gpu == gpu for r in after) <= ledger.slots_per_gpu
        if ledger.used(after, gpu) > ledger.limit_mib:  # only what parking cannot free keeps it over
            on = [r for r in after if r.gpu == gpu and r.footprint_mib]
            assert all(r.agent_id in by_id and by_id[r.agent_id].busy for r in on)
            assert gpu not in placed.values()
        if ledger.used(before, gpu) > ledger.limit_mib:  # closed until a new reading
            assert gpu not in placed.values()
    assert all(0 <= r.gpu < ledger.num_gpus for r in after)
    return after


@settings(max_examples=300, deadline=None)
@given(data=st.data(), ledger=ledgers())
def test_rounds_never_cross_budget_or_slots(data: st.DataObject, ledger: VramLedger) -> None:
    residents: tuple[Resident, ...] = ()
    for now in range(data.draw(st.integers(1, 8))):
        if data.draw(st.booleans()):  # a reconciliation between rounds
            ledger = data.draw(measured(ledger))
        # Between rounds, residents start or finish work and gain or drain their queues.
        residents = tuple(
            Resident(
                r.agent_id,
                r.gpu,
                r.priority,
                float(now) - data.draw(st.floats(0, 5)),
                r.footprint_mib,
                busy=data.draw(st.booleans()),
                wanted=data.draw(st.booleans()),
            )
            for r in residents
        )
        demand = data.draw(demands(ledger.budget_mib))
        p = plan(residents, demand, ledger)
        residents = check_invariants(residents, demand, p, ledger)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), ledger=ledgers())
def test_plan_is_deterministic_and_parks_nothing_on_an_empty_pool(
    data: st.DataObject, ledger: VramLedger
) -> None:
    demand = data.draw(demands(ledger.budget_mib))
    first = plan([], demand, ledger)
    assert first == plan([], demand, ledger)
    assert first.park == ()
