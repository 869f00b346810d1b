"""The monitor cannot see the answer key: the same tasks with wrong keys get the same monitor
decisions (same seed) and a lower `correct` count from the grader."""

from __future__ import annotations

from pathlib import Path

from agents.config import load_settings
from agents.engines.base import GenRequest, GenResult
from agents.models import AgentRecord, AgentSpec, Task
from pool.driver.batch import graded
from pool.runtime.host import HostRuntime
from pool.store.checkpoint import CheckpointStore
from recovery.monitor import Monitor

ANSWERS = {"t0": "Paris", "t1": "the the the the the the the the the the the the \x00",
           "t2": "Lyon", "t3": '{"name": "Ana", "age": 30}', "t4": "positive"}


class FixedEngine:
    """Answers by task id, whatever the request's key says (a model does not know the key)."""

    name = "fixed"

    def generate(self, req: GenRequest) -> GenResult:
        return GenResult(text=ANSWERS[req.task_id], finish_reason="stop", prompt_tokens=5,
                         completion_tokens=3, elapsed_s=0.01)

    def save_state(self, agent_id: str) -> bytes | None:
        return None

    def load_state(self, agent_id: str, blob: bytes | None) -> bool:
        return False

    def close(self) -> None: ...


def _tasks(keys: dict[str, str]) -> list[Task]:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    return [
        Task(task_id="t0", agent_id="a1", prompt="Capital of France?", kind="answer", expected=keys["t0"]),
        Task(task_id="t1", agent_id="a1", prompt="Say something.", kind="free"),
        Task(task_id="t2", agent_id="a1", prompt="Capital of Italy?", kind="answer", expected=keys["t2"]),
        Task(task_id="t3", agent_id="a1", prompt="Ana, 30, as JSON", kind="json", schema=schema,
             expected=keys["t3"]),
        Task(task_id="t4", agent_id="a1", prompt="Mood?", kind="label", labels=("positive", "negative"),
             expected=keys["t4"]),
    ]


def _run(tmp_path: Path, tasks: list[Task]) -> tuple[list[tuple[object, ...]], list[dict]]:
    settings = load_settings(overrides={"engine": {"kind": "scripted"},
                                        "recovery": {"backoff_base_s": 0.0}})
    store = CheckpointStore(tmp_path)
    store.write(AgentRecord(spec=AgentSpec(agent_id="a1")), epoch=0)
    monitor = Monitor(settings.health, settings.recovery, clock=lambda: 0.0)
    host = HostRuntime("h0", settings, FixedEngine(), store, monitor.assess, clock=lambda: 0.0,
                       sleep=lambda s: None)
    host.bind("a1", None, epoch=1)
    outcomes = host.run([(t, None) for t in tasks], headroom=0.5)
    results = [o.result for o in outcomes if o.result is not None]
    decisions = [(r.task_id, r.status, r.attempts, r.tiers, r.score, r.output) for r in results]
    return sorted(decisions), graded([r.model_dump(mode="json") for r in results], tasks)


def test_wrong_keys_change_the_grade_but_not_one_monitor_decision(tmp_path: Path) -> None:
    right = {"t0": "Paris", "t2": "Rome", "t3": '{"name": "Ana", "age": 30}', "t4": "positive"}
    wrong = {"t0": "Berlin", "t2": "Madrid", "t3": '{"name": "Bo", "age": 1}', "t4": "negative"}
    decided, rows = _run(tmp_path / "right", _tasks(right))
    decided_wrong, rows_wrong = _run(tmp_path / "wrong", _tasks(wrong))
    assert decided == decided_wrong  # statuses, attempts, tiers, scores, outputs: all the same
    correct = {r["task_id"]: r["correct"] for r in rows}
    assert correct == {"t0": True, "t1": None, "t2": False, "t3": True, "t4": True}
    assert sum(bool(r["correct"]) for r in rows_wrong) == 0 < sum(bool(v) for v in correct.values())
    succeeded = {d[0] for d in decided if d[1] == "succeeded"}
    assert "t2" in succeeded and "t1" not in succeeded  # a wrong answer passes; garbage does not
