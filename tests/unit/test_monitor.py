"""The monitor keeps restarts per agent; attempts and tiers travel with the task (its Carry)."""

from agents.config import HealthConfig, RecoveryConfig
from agents.errors import FaultClass
from agents.models import TaskKind
from recovery.monitor import Monitor
from recovery.types import Action, Signals


def _sig(text: str = "", fault: FaultClass = FaultClass.NONE, tiers: tuple[int, ...] = ()) -> Signals:
    return Signals(text=text, finish_reason="stop", kind=TaskKind.FREE, elapsed_s=0.1, deadline_s=10,
                   memory_headroom=0.5, fault=fault, tiers_used=tiers)


def test_attempts_of_interleaved_tasks_do_not_leak_into_each_other() -> None:
    cfg = RecoveryConfig(max_attempts=3, backoff_base_s=0)
    m = Monitor(HealthConfig(), cfg, clock=lambda: 0.0)
    bad = _sig(fault=FaultClass.TIMEOUT)
    for attempt in range(2):  # eight tasks of one agent, each failing twice, assessed in rounds
        verdicts = m.assess("a", [(f"t{i}", f"p{i}", attempt, bad) for i in range(8)])
        assert all(d.action is Action.RETRY and d.history.attempts == attempt + 1 for _, d in verdicts)
    verdicts = m.assess("a", [(f"t{i}", f"p{i}", 2, _sig("fine")) for i in range(8)])
    assert all(d.action is Action.ACCEPT for _, d in verdicts)
    assert not hasattr(m, "tasks"), "the monitor keeps no per-task state"


def _carried(m: Monitor, fault: FaultClass, rounds: int) -> list[tuple[tuple[int, ...], Action]]:
    """One task's decisions, each with the tiers it was given: the caller (the Host's Carry)
    holds the attempt and the tiers between rounds, not the monitor."""
    tiers: tuple[int, ...] = ()
    seen = []
    for attempt in range(rounds):
        (_, d), = m.assess("a", [("t", "p", attempt, _sig(fault=fault, tiers=tiers))])
        seen.append((tiers, d.action))
        tiers = d.history.tiers_used
    return seen


def test_a_monitor_restarted_mid_task_keeps_the_attempt_cap_and_the_escalation() -> None:
    cfg = RecoveryConfig(max_attempts=4, backoff_base_s=0)
    old = _carried(Monitor(HealthConfig(), cfg, clock=lambda: 0.0), FaultClass.GARBAGE, 4)
    assert [a for _, a in old] == [Action.RETRY, Action.RETRY, Action.COMPRESS, Action.FAIL_TASK]
    for n, (tiers, action) in enumerate(old):  # a fresh monitor at attempt n decides the same
        fresh = Monitor(HealthConfig(), cfg, clock=lambda: 0.0)
        (_, d), = fresh.assess("a", [("t", "p", n, _sig(fault=FaultClass.GARBAGE, tiers=tiers))])
        assert d.action is action, (n, tiers)


def test_a_failed_agent_is_recorded_once_however_many_say_so() -> None:
    """The monitor fails the agent (FAIL_AGENT), then the manager folds the Host's FAILED results
    and tells it again: one journal row, one `agent.failed` event. A restarted monitor that read
    the failure back does not record it again either."""
    rows: list[dict] = []
    m = Monitor(HealthConfig(), RecoveryConfig(), clock=lambda: 0.0, journal=rows.extend)
    m.mark_failed("a", "floor raised to tier 3")
    m.mark_failed("a", "agent failed: floor raised to tier 3")  # the manager's fold
    failed = [r for r in rows if r["kind"] == "agent_failed"]
    assert len(failed) == 1 and m.failed == {"a": "floor raised to tier 3"}
    assert [e["event"] for e in m.events.drain()].count("agent.failed") == 1
    again = Monitor(HealthConfig(), RecoveryConfig(), clock=lambda: 0.0, journal=rows.extend)
    again.replay(rows)
    again.mark_failed("a", "agent failed")
    assert len([r for r in rows if r["kind"] == "agent_failed"]) == 1 and not again.events.drain()
