"""The monitor keeps restarts per agent and attempts per task."""

from agents.config import HealthConfig, RecoveryConfig
from agents.errors import FaultClass
from agents.models import TaskKind
from recovery.monitor import Monitor
from recovery.types import Action, Signals


def _sig(text: str = "", fault: FaultClass = FaultClass.NONE) -> Signals:
    return Signals(text=text, finish_reason="stop", kind=TaskKind.FREE, elapsed_s=0.1, deadline_s=10,
                   memory_headroom=0.5, fault=fault)


def test_attempts_of_interleaved_tasks_do_not_leak_into_each_other() -> None:
    cfg = RecoveryConfig(max_attempts=3, backoff_base_s=0)
    m = Monitor(HealthConfig(), cfg, clock=lambda: 0.0)
    bad = _sig(fault=FaultClass.TIMEOUT)
    for attempt in range(2):  # eight tasks of one agent, each failing twice, assessed in rounds
        verdicts = m.assess("a", [(f"t{i}", f"p{i}", attempt, bad) for i in range(8)])
        assert all(d.action is Action.RETRY and d.history.attempts == attempt + 1 for _, d in verdicts)
    verdicts = m.assess("a", [(f"t{i}", f"p{i}", 2, _sig("fine")) for i in range(8)])
    assert all(d.action is Action.ACCEPT for _, d in verdicts)
    assert not m.tasks, "finished tasks leave no state behind"


def test_a_task_gives_up_at_the_cap() -> None:
    m = Monitor(HealthConfig(), RecoveryConfig(max_attempts=3, backoff_base_s=0), clock=lambda: 0.0)
    actions = [m.assess("a", [("t", "p", n, _sig(fault=FaultClass.TIMEOUT))])[0][1].action for n in range(3)]
    assert actions == [Action.RETRY, Action.RETRY, Action.FAIL_TASK]
    assert len(m.dead_letters) == 1


def test_a_round_of_oom_under_memory_pressure_is_one_restart_of_the_agent() -> None:
    ticks = iter(range(100))  # a clock that moves on every call
    m = Monitor(HealthConfig(), RecoveryConfig(intensity=2, backoff_base_s=0),
                clock=lambda: float(next(ticks)))
    pressed = Signals(text="fine", finish_reason="stop", kind=TaskKind.FREE, elapsed_s=0.1,
                      deadline_s=10, memory_headroom=-0.1)  # the ledger says the GPU is over
    verdicts = m.assess("a", [(f"t{i}", f"p{i}", 0, pressed) for i in range(8)])
    assert all(d.action is Action.COMPRESS for _, d in verdicts)
    assert len(m.histories["a"].restarts) == 1 and not m.failed
