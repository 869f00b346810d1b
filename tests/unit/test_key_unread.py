"""The answer key (`Task.expected`) is read by the grader alone: the Host, the monitor and the
engine never see it, yet the scripted engine still answers the synthetic tasks right (it works
them out from the prompt, as a model would)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from agents.config import load_settings
from agents.engines.base import GenRequest
from agents.engines.scripted import ScriptedEngine
from agents.models import AgentRecord, AgentSpec, GenerationParams, Task, TaskKind
from pool.driver.synthetic import synthetic_tasks
from pool.runtime.host import HostRuntime
from pool.store.checkpoint import CheckpointStore
from recovery.grade import grade
from recovery.monitor import Monitor

ROOT = Path(__file__).resolve().parents[2]
GRADER = {"recovery/grade.py", "pool/driver/batch.py"}  # `grade` and `graded`: the only key readers
NO_FAULTS = dict.fromkeys(("garbage", "truncation", "timeout", "oom", "crash", "permanent"), 0.0)
READS: list[str] = []


class Keyed(Task):
    """A task that records every read of its key (an exception alone could be swallowed by a
    Host that turns a task's errors into a failed result)."""

    def __getattribute__(self, name: str) -> Any:
        if name == "expected":
            READS.append(object.__getattribute__(self, "task_id"))
        return super().__getattribute__(name)


def _host(tmp_path: Path, **engine: Any) -> HostRuntime:
    settings = load_settings(overrides={"engine": {"kind": "scripted", **engine},
                                        "recovery": {"backoff_base_s": 0.0}})
    store = CheckpointStore(tmp_path)
    store.write(AgentRecord(spec=AgentSpec(agent_id="agent-000000")), epoch=0)
    monitor = Monitor(settings.health, settings.recovery, clock=lambda: 0.0)
    host = HostRuntime("h0", settings, ScriptedEngine(settings.engine), store, monitor.assess,
                       clock=lambda: 0.0, sleep=lambda s: None)
    host.bind("agent-000000", None, epoch=1)
    return host


def test_the_host_and_monitor_never_read_a_tasks_key(tmp_path: Path) -> None:
    READS.clear()
    tasks = [Keyed.model_validate(t.model_dump()) for t in synthetic_tasks(60, agents=1, seed=5)]
    assert tasks[0].expected is not None
    assert [tasks[0].task_id] == READS  # the guard sees a read
    READS.clear()
    host, todo, done = _host(tmp_path, seed=5), [(t, None) for t in tasks], 0
    while todo:  # a task handed back to move runs again here, as on its new Host
        outcomes = host.run(todo, headroom=0.5)
        todo = [(o.task, o.carry) for o in outcomes if o.result is None]
        done += sum(o.result is not None for o in outcomes)
    assert done == len(tasks)
    assert READS == [], f"the key was read while running tasks {sorted(set(READS))[:5]}"


def test_nothing_in_pool_or_recovery_reads_a_key_outside_the_grader() -> None:
    readers = []
    for path in sorted([*ROOT.glob("pool/**/*.py"), *ROOT.glob("recovery/**/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Attribute) and node.attr == "expected" and rel not in GRADER:
                readers.append(f"{rel}:{node.lineno}")
    assert readers == []


def test_a_generation_request_has_no_key() -> None:
    assert "expected" not in GenRequest.__dataclass_fields__


def test_the_scripted_engine_answers_synthetic_tasks_right_without_the_key(tmp_path: Path) -> None:
    engine = ScriptedEngine(load_settings(overrides={"engine": {"kind": "scripted",
                                                                "faults": NO_FAULTS}}).engine)
    graded = 0
    for t in synthetic_tasks(40, agents=1, seed=9):
        req = GenRequest(agent_id=t.agent_id, task_id=t.task_id, system_prompt="", prompt=t.prompt,
                         params=GenerationParams(), kind=t.kind, json_schema=t.json_schema,
                         labels=t.labels)
        verdict = grade(t.kind, engine.generate(req).text, t.expected)
        if t.kind in (TaskKind.ANSWER, TaskKind.LABEL):
            assert verdict is True, (t.prompt, t.expected)
            graded += 1
    assert graded == 20
