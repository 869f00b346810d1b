"""The Host loop isolates what goes wrong: a silent or raising monitor is replaced by local
assessment, and an unexpected error, an uncheckable schema or a backoff that cannot be slept
fails its own task alone."""

from pathlib import Path

import pytest
from host_data import make_host, make_tasks

from agents.config import load_settings
from agents.engines.base import GenRequest
from agents.engines.scripted import ScriptedEngine
from agents.errors import UsageError
from agents.models import Task, TaskStatus
from agents.state import AgentState
from recovery.monitor import Monitor


def test_a_monitor_that_does_not_answer_is_replaced_by_local_assessment(tmp_path: Path) -> None:
    """A hung monitor (the Ray wrapper's wait timed out) never stops the Host: it scores and
    decides itself, with each task's own attempt count, and says so once per run."""
    from pool.runtime.host import MonitorUnavailable

    host, _ = make_host(tmp_path, "permanent")
    calls: list[int] = []

    def hung(agent_id: str, items: list) -> list:
        calls.append(len(items))
        raise MonitorUnavailable("no answer in 30.0 s")

    host.assess = hung
    outcomes = host.run(make_tasks(3), headroom=0.5)
    cap = host.settings.recovery.max_attempts
    assert [(o.result.status, o.result.attempts) for o in outcomes] == [(TaskStatus.FAILED, cap)] * 3
    assert host.agent.state is not AgentState.FAILED
    assert calls == [3], "the monitor is not waited for again in the same run"
    (event,) = [e for e in host.events.drain() if e["event"] == "host.monitor_unavailable"]
    assert event["agent_id"] == "a1" and "30.0 s" in event["reason"]
    healthy, _ = make_host(tmp_path / "ok", "garbage")
    healthy.assess = hung
    healed = [o.result for o in healthy.run(make_tasks(4), headroom=0.5) if o.result]
    assert any(r.status is TaskStatus.SUCCEEDED and 1 in r.tiers for r in healed)  # tier 1 locally


class _Breaks:
    """The scripted engine, except that one task's generation raises `error`."""

    name = "breaks"

    def __init__(self, inner: ScriptedEngine, task_id: str, error: Exception) -> None:
        self.inner, self.task_id, self.error = inner, task_id, error

    def generate(self, req: GenRequest):  # type: ignore[no-untyped-def]
        if req.task_id == self.task_id:
            raise self.error
        return self.inner.generate(req)

    def save_state(self, agent_id: str) -> bytes | None:
        return self.inner.save_state(agent_id)

    def load_state(self, agent_id: str, blob: bytes | None) -> bool:
        return self.inner.load_state(agent_id, blob)

    def close(self) -> None: ...


@pytest.mark.parametrize("error", [ValueError("grammar cannot be built\nat line 2"), MemoryError(),
                                   OverflowError("math range error"),
                                   UsageError("task t1: constraint has no grammar")])
def test_an_unexpected_error_fails_its_task_alone(tmp_path: Path, error: Exception) -> None:
    host, store = make_host(tmp_path, None)
    host.engine = _Breaks(host.engine, "t1", error)  # type: ignore[arg-type]
    outcomes = {o.task.task_id: o.result for o in host.run(make_tasks(3), headroom=0.5)}
    assert {t: r.status for t, r in outcomes.items()} == {
        "t0": TaskStatus.SUCCEEDED, "t1": TaskStatus.FAILED, "t2": TaskStatus.SUCCEEDED}
    reason = outcomes["t1"].error
    assert reason.startswith(type(error).__name__) and "\n" not in reason, reason
    assert host.agent.state is not AgentState.FAILED
    assert store.read("a1")[0].tasks_done == 2  # the batch was committed
    (event,) = [e for e in host.events.drain() if e["event"] == "host.task_error"]
    assert event["task_id"] == "t1" and event["error"] == reason
    assert host.park()  # the agent is in a state it can leave the Host from


def test_a_task_whose_schema_cannot_be_checked_fails_alone(tmp_path: Path) -> None:
    """A schema RE2 cannot run fails its task before the engine sees it; a `$ref` that only
    fails when an answer reaches it fails the monitor's round, which the Host then assesses
    task by task: either way the task fails alone, with a one-line reason."""
    host, _ = make_host(tmp_path, None)
    asked: list[str] = []
    inner = host.engine.generate
    host.engine.generate = lambda req: asked.append(req.task_id) or inner(req)  # type: ignore[method-assign]
    backref = Task(task_id="backref", agent_id="a1", prompt="p", kind="json",
                   schema={"type": "string", "pattern": r"(a)\1"})
    remote = Task(task_id="remote", agent_id="a1", prompt="p", kind="json",
                  schema={"type": "object", "properties": {"a": {"$ref": "https://example.com/x"}}})
    tasks = [*make_tasks(2), (backref, None), (remote, None)]
    outcomes = {o.task.task_id: o.result for o in host.run(tasks, headroom=0.5)}
    assert outcomes["backref"].status is TaskStatus.FAILED and "backreferences" in outcomes["backref"].error
    assert outcomes["remote"].status is TaskStatus.FAILED and "does not resolve" in outcomes["remote"].error
    assert outcomes["t0"].status is outcomes["t1"].status is TaskStatus.SUCCEEDED
    assert "backref" not in asked and "remote" in asked
    assert [e["event"] for e in host.events.drain() if e["event"].startswith("host.")] == [
        "host.task_error", "host.monitor_error", "host.task_error"]


def test_a_monitor_that_raises_is_replaced_by_local_assessment_for_the_round(tmp_path: Path) -> None:
    host, _ = make_host(tmp_path, None)

    def broken(agent_id: str, items: list) -> list:
        raise RuntimeError("monitor bug\nTraceback ...")

    host.assess = broken
    outcomes = host.run(make_tasks(3), headroom=0.5)
    assert [o.result.status for o in outcomes] == [TaskStatus.SUCCEEDED] * 3
    (event,) = [e for e in host.events.drain() if e["event"] == "host.monitor_error"]
    assert event["reason"] == "RuntimeError: monitor bug"


def test_a_backoff_that_cannot_be_slept_fails_the_retrying_tasks_alone(tmp_path: Path) -> None:
    host, _ = make_host(tmp_path, "garbage")

    def overflow(seconds: float) -> None:
        raise OverflowError("sleep length is too large")

    host.sleep = overflow
    host.settings = load_settings(overrides={"engine": {"kind": "scripted"},
                                             "recovery": {"backoff_base_s": 1.0}})
    host.assess = Monitor(host.settings.health, host.settings.recovery, clock=lambda: 0.0).assess
    outcomes = host.run(make_tasks(3), headroom=0.5)
    assert [o.result.status for o in outcomes] == [TaskStatus.FAILED] * 3
    assert all(o.result.error.startswith("OverflowError") for o in outcomes)
    assert host.agent.state is not AgentState.FAILED
