"""Recovery policy: each fault class in each mode, supervision, backoff, and two invariants."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.config import RecoveryConfig, RecoveryMode
from agents.errors import FaultClass
from agents.models import GenerationParams
from recovery.policy import ACTION_SEVERITY, FAULT_SEVERITY, apply_retune, decide
from recovery.types import Action, Decision, HealthReport, History, Retune, Tier

FAULTS = [f for f in FaultClass if f is not FaultClass.NONE]
MINOR_FAULTS = [FaultClass.GARBAGE, FaultClass.CONTRACT, FaultClass.TRUNCATED, FaultClass.TIMEOUT]


def report(fault: FaultClass = FaultClass.GARBAGE) -> HealthReport:
    ok = fault is FaultClass.NONE
    value = 1.0 if ok else 0.2
    return HealthReport(value, value, value, 1.0, 1.0, 1.0, fault, healthy=ok, reason=str(fault))


def cfg(**kw: Any) -> RecoveryConfig:
    return RecoveryConfig(**({"max_attempts": 10} | kw))


def run(faults: list[FaultClass], config: RecoveryConfig, start: float = 0.0) -> list[Decision]:
    """Decide on each fault in turn, one second apart, threading the history through."""
    history, out = History(), []
    for i, fault in enumerate(faults):
        decision = decide(report(fault), history, config, now=start + i)
        out.append(decision)
        history = decision.history
    return out


# --- accept and bookkeeping --------------------------------------------------------------


@pytest.mark.parametrize("mode", list(RecoveryMode))
def test_no_fault_is_accepted_and_only_forgives(mode: RecoveryMode) -> None:
    history = History(restarts=(1.0,), attempts=2, floor=Tier.MINOR, tiers_used=(1, 1))
    decision = decide(report(FaultClass.NONE), history, cfg(mode=mode), now=5.0)
    assert (decision.action, decision.tier) == (Action.ACCEPT, Tier.NONE)
    assert decision.history == History(attempts=2, tiers_used=(1, 1))  # restart forgiven
    assert decide(report(FaultClass.NONE), History(), cfg(mode=mode), now=5.0).history == History()
    assert decision.delay_s == 0.0


def test_unhealthy_without_fault_is_accepted_with_reason() -> None:
    degraded = HealthReport(0.6, 1.0, 1.0, 0.0, 0.5, 0.0, FaultClass.NONE, False, "weak: latency")
    decision = decide(degraded, History(), cfg(), now=0.0)
    assert decision.action is Action.ACCEPT
    assert "latency" in decision.reason


def test_every_recovery_is_recorded() -> None:
    history = History(restarts=(0.0, 50.0), attempts=1, tiers_used=(1,))
    decision = decide(report(FaultClass.OOM), history, cfg(period_s=60.0), now=100.0)
    assert decision.history.attempts == 2
    assert decision.history.restarts == (50.0, 100.0)  # 0.0 slid out of the window
    assert decision.history.tiers_used == (1, int(decision.tier))


# --- TIERED ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "action", "tier", "retune"),
    [
        (FaultClass.GARBAGE, Action.RETRY, Tier.MINOR, Retune(temperature=0.2)),
        (FaultClass.CONTRACT, Action.RETRY, Tier.MINOR, Retune(temperature=0.0, constrain=True)),
        (FaultClass.TRUNCATED, Action.RETRY, Tier.MINOR, Retune(max_tokens_factor=2.0)),
        (FaultClass.TIMEOUT, Action.RETRY, Tier.MINOR, Retune()),
        (FaultClass.OOM, Action.COMPRESS, Tier.RESOURCES, Retune(drop_kv=True)),
        (FaultClass.CRASH, Action.MIGRATE, Tier.RESOURCES, Retune()),
        (FaultClass.PERMANENT, Action.FAIL_TASK, Tier.SEVERE, Retune()),
    ],
)
def test_tiered_first_response(
    fault: FaultClass, action: Action, tier: Tier, retune: Retune
) -> None:
    decision = decide(report(fault), History(), cfg(), now=0.0)
    assert (decision.action, decision.tier, decision.retune) == (action, tier, retune)
    assert (decision.delay_s > 0) == (action in (Action.RETRY, Action.COMPRESS, Action.MIGRATE))


def test_garbage_cools_down_to_greedy() -> None:
    temps = [d.retune.temperature for d in run([FaultClass.GARBAGE] * 2, cfg())]
    assert temps == [0.2, 0.0]


@pytest.mark.parametrize("fault", MINOR_FAULTS)
def test_two_minor_attempts_escalate_to_compress_then_migrate(fault: FaultClass) -> None:
    decisions = run([fault] * 4, cfg())
    assert [d.action for d in decisions] == [
        Action.RETRY,
        Action.RETRY,
        Action.COMPRESS,
        Action.MIGRATE,
    ]
    assert [d.tier for d in decisions] == [Tier.MINOR, Tier.MINOR, Tier.RESOURCES, Tier.RESOURCES]
    assert decisions[2].retune.drop_kv
    assert decisions[2].retune.constrain == (fault is FaultClass.CONTRACT)


def test_oom_that_compression_did_not_fix_migrates() -> None:
    actions = [d.action for d in run([FaultClass.OOM] * 2, cfg())]
    assert actions == [Action.COMPRESS, Action.MIGRATE]


@pytest.mark.parametrize("fault", FAULTS)
def test_attempt_cap_fails_the_task(fault: FaultClass) -> None:
    decisions = run([fault] * 3, cfg(max_attempts=3, intensity=100))
    last = decisions[-1]
    assert (last.action, last.tier) == (Action.FAIL_TASK, Tier.SEVERE)
    assert last.history.attempts == 3
    assert last.delay_s == 0.0


# --- NONE and NAIVE ----------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
def test_mode_none_fails_every_fault(fault: FaultClass) -> None:
    decision = decide(report(fault), History(), cfg(mode=RecoveryMode.NONE), now=0.0)
    assert (decision.action, decision.tier) == (Action.FAIL_TASK, Tier.SEVERE)
    assert decision.history.attempts == 1


@pytest.mark.parametrize("fault", FAULTS)
def test_mode_naive_retries_unchanged_until_the_cap(fault: FaultClass) -> None:
    decisions = run([fault] * 4, cfg(mode=RecoveryMode.NAIVE, max_attempts=4, intensity=1))
    for d in decisions[:-1]:
        assert (d.action, d.tier, d.retune) == (Action.RETRY, Tier.MINOR, Retune())
        assert d.delay_s > 0
    assert decisions[-1].action is Action.FAIL_TASK
    assert decisions[-1].history.floor is Tier.NONE  # supervision is a TIERED feature


# --- supervision -------------------------------------------------------------------------


def tasks_until_fail(
    config: RecoveryConfig, gap_s: float, fault: FaultClass = FaultClass.OOM
) -> list[Decision]:
    """One `fault` per new task, `gap_s` apart, until the agent fails (or 20 tasks)."""
    history, out, now = History(), [], 0.0
    for _ in range(20):
        decision = decide(report(fault), history.for_new_task(), config, now)
        out.append(decision)
        if decision.action is Action.FAIL_AGENT:
            break
        history, now = decision.history, now + gap_s
    return out


def test_restart_storm_escalates_to_fail_agent() -> None:
    decisions = tasks_until_fail(cfg(intensity=2, period_s=10.0), gap_s=1.0)
    floors = [d.history.floor for d in decisions]
    assert floors == [Tier.NONE, Tier.NONE, Tier.MINOR, Tier.RESOURCES, Tier.SEVERE, Tier.SEVERE]
    assert all(d.action is Action.COMPRESS for d in decisions[:-1])
    assert (decisions[-1].action, decisions[-1].tier) == (Action.FAIL_AGENT, Tier.SEVERE)
    assert "floor raised to tier 3" in decisions[-2].reason


def test_a_busy_healthy_agent_with_occasional_resource_faults_is_not_failed() -> None:
    """One OOM (a tier-2 restart) in every 10 tasks, 100 tasks a second: more restarts per
    window than `intensity`, but each is followed by healthy answers, which forgive them."""
    history, now, config = History(), 0.0, cfg(intensity=2, period_s=60.0)
    for i in range(200):
        fault = FaultClass.OOM if i % 10 == 0 else FaultClass.NONE
        decision = decide(report(fault), history.for_new_task(), config, now)
        assert decision.action is not Action.FAIL_AGENT, f"failed at task {i}"
        history, now = decision.history, now + 0.01
    assert history.floor is Tier.NONE and len(history.restarts) <= 1


def test_tier_two_decisions_of_one_round_are_one_restart() -> None:
    history = History()
    for _ in range(8):  # a batch of eight tasks, all OOM in the same round (one `now`)
        decision = decide(report(FaultClass.OOM), history.for_new_task(), cfg(intensity=2), now=5.0)
        assert decision.action is Action.COMPRESS
        history = decision.history
    assert history.restarts == (5.0,) and history.floor is Tier.NONE


def test_a_healthy_answer_forgives_the_oldest_restart() -> None:
    history = History(restarts=(1.0, 2.0), floor=Tier.MINOR)
    once = decide(report(FaultClass.NONE), history, cfg(), now=3.0).history
    assert once.restarts == (2.0,) and once.floor is Tier.MINOR
    twice = decide(report(FaultClass.NONE), once, cfg(), now=4.0).history
    assert twice.restarts == () and twice.floor is Tier.NONE
    degraded = HealthReport(0.6, 1.0, 1.0, 0.0, 0.5, 0.0, FaultClass.NONE, False, "slow")
    assert decide(degraded, history, cfg(), now=3.0).history is history  # below the bar: no


def test_tier_one_retries_never_escalate_the_agent() -> None:
    decisions = tasks_until_fail(cfg(intensity=2, period_s=10.0), gap_s=0.1, fault=FaultClass.CONTRACT)
    assert len(decisions) == 20
    assert all(d.action is Action.RETRY and not d.history.restarts for d in decisions)


def test_a_raised_floor_forces_tier_two_on_a_tier_one_fault() -> None:
    history = History(floor=Tier.RESOURCES, restarts=(0.0,))
    decision = decide(report(FaultClass.CONTRACT), history, cfg(), now=1.0)
    assert decision.action is Action.COMPRESS
    assert decision.retune == Retune(temperature=0.0, constrain=True, drop_kv=True)


def test_a_quiet_window_resets_the_floor() -> None:
    history = History(floor=Tier.RESOURCES, restarts=(0.0,))
    decision = decide(report(FaultClass.CONTRACT), history, cfg(period_s=10.0), now=100.0)
    assert decision.action is Action.RETRY and decision.history.floor is Tier.NONE


def test_restarts_outside_the_window_do_not_count() -> None:
    decisions = tasks_until_fail(cfg(intensity=2, period_s=10.0), gap_s=6.0)
    assert len(decisions) == 20
    assert all(d.action is Action.COMPRESS and d.history.floor is Tier.NONE for d in decisions)
    assert all(len(d.history.restarts) <= 2 for d in decisions)


def test_decisions_never_go_below_the_floor() -> None:
    history = History(floor=Tier.RESOURCES, restarts=(0.0,))
    for fault in MINOR_FAULTS:
        assert decide(report(fault), history, cfg(), now=0.0).tier >= Tier.RESOURCES


def test_severe_floor_fails_the_agent() -> None:
    history = History(floor=Tier.SEVERE, restarts=(0.0,))
    decision = decide(report(FaultClass.TIMEOUT), history, cfg(), now=0.0)
    assert decision.action is Action.FAIL_AGENT


# --- backoff -----------------------------------------------------------------------------


def test_backoff_is_deterministic() -> None:
    config = cfg(seed=7)
    first = [d.delay_s for d in run([FaultClass.TIMEOUT] * 5, config)]
    again = [d.delay_s for d in run([FaultClass.TIMEOUT] * 5, config)]
    other = [d.delay_s for d in run([FaultClass.TIMEOUT] * 5, cfg(seed=8))]
    assert first == again
    assert first != other


def test_backoff_doubles_without_jitter_and_is_capped() -> None:
    config = cfg(jitter=0.0, backoff_base_s=0.1, backoff_max_s=0.5, intensity=100)
    delays = [d.delay_s for d in run([FaultClass.TIMEOUT] * 2, config)]
    assert delays == pytest.approx([0.1, 0.2])
    naive = cfg(mode=RecoveryMode.NAIVE, jitter=0.0, backoff_base_s=0.1, backoff_max_s=0.5)
    delays = [d.delay_s for d in run([FaultClass.TIMEOUT] * 6, naive)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])


@given(
    attempts=st.integers(0, 18),
    restarts=st.lists(st.floats(0, 100), max_size=5),
    seed=st.integers(0, 2**32),
    jitter=st.floats(0, 1),
)
def test_backoff_is_bounded(attempts: int, restarts: list[float], seed: int, jitter: float) -> None:
    config = cfg(mode=RecoveryMode.NAIVE, max_attempts=20, seed=seed, jitter=jitter)
    history = History(restarts=tuple(restarts), attempts=attempts)
    decision = decide(report(FaultClass.TIMEOUT), history, config, now=100.0)
    nominal = min(config.backoff_max_s, config.backoff_base_s * 2**attempts)
    if decision.action is Action.RETRY:
        assert nominal * (1 - jitter) - 1e-12 <= decision.delay_s <= nominal * (1 + jitter) + 1e-12
        assert decision.delay_s <= config.backoff_max_s * (1 + jitter) + 1e-12


# --- apply_retune and severity orders ----------------------------------------------------


def test_apply_retune() -> None:
    params = GenerationParams(temperature=0.7, max_tokens=96, seed=3)
    assert apply_retune(params, Retune()) == params
    tuned = apply_retune(params, Retune(temperature=0.0, max_tokens_factor=2.0, constrain=True))
    assert (tuned.temperature, tuned.max_tokens, tuned.seed) == (0.0, 192, 3)
    assert params.max_tokens == 96  # the input is untouched
    big = apply_retune(GenerationParams(max_tokens=3000), Retune(max_tokens_factor=2.0))
    assert big.max_tokens == 4096


def test_severity_orders() -> None:
    assert set(ACTION_SEVERITY) == set(Action) and set(FAULT_SEVERITY) == set(FaultClass)
    assert sorted(ACTION_SEVERITY, key=ACTION_SEVERITY.__getitem__) == [
        Action.ACCEPT,
        Action.RETRY,
        Action.COMPRESS,
        Action.MIGRATE,
        Action.FAIL_TASK,
        Action.FAIL_AGENT,
    ]
    sev = FAULT_SEVERITY
    assert sev[FaultClass.NONE] < sev[FaultClass.GARBAGE] == sev[FaultClass.CONTRACT]
    assert sev[FaultClass.TRUNCATED] == sev[FaultClass.TIMEOUT] < sev[FaultClass.OOM]
    assert sev[FaultClass.OOM] == sev[FaultClass.CRASH] < sev[FaultClass.PERMANENT]


# --- invariants --------------------------------------------------------------------------

histories = st.builds(
    History,
    restarts=st.lists(st.floats(0, 100), max_size=8).map(lambda xs: tuple(sorted(xs))),
    attempts=st.integers(0, 8),
    floor=st.sampled_from(list(Tier)),
    tiers_used=st.lists(st.integers(1, 3), max_size=6).map(tuple),
)
configs = st.builds(
    RecoveryConfig,
    mode=st.sampled_from(list(RecoveryMode)),
    max_attempts=st.integers(1, 10),
    intensity=st.integers(1, 8),
    period_s=st.floats(1, 200),
    seed=st.integers(0, 1000),
)


@given(
    history=histories,
    config=configs,
    now=st.floats(100, 300),
    pair=st.lists(st.sampled_from(list(FaultClass)), min_size=2, max_size=2, unique=True),
)
def test_a_worse_report_never_gets_a_lighter_action(
    history: History, config: RecoveryConfig, now: float, pair: list[FaultClass]
) -> None:
    milder, worse = sorted(pair, key=FAULT_SEVERITY.__getitem__)
    if FAULT_SEVERITY[milder] == FAULT_SEVERITY[worse]:
        return
    a = decide(report(milder), history, config, now)
    b = decide(report(worse), history, config, now)
    assert ACTION_SEVERITY[b.action] >= ACTION_SEVERITY[a.action]
    assert b.tier >= a.tier


@given(
    config=configs,
    faults=st.lists(st.sampled_from(FAULTS), min_size=20, max_size=20),
    history=histories,
    gap=st.floats(0, 100),
)
def test_always_failing_ends_within_max_attempts(
    config: RecoveryConfig, faults: list[FaultClass], history: History, gap: float
) -> None:
    history = history.for_new_task()
    for i, fault in enumerate(faults[: config.max_attempts]):
        decision = decide(report(fault), history, config, now=1000.0 + i * gap)
        history = decision.history
        assert decision.action is not Action.ACCEPT
        if decision.action in (Action.FAIL_TASK, Action.FAIL_AGENT):
            assert decision.tier is Tier.SEVERE
            return
    pytest.fail(f"no terminal decision within {config.max_attempts} attempts")


