"""The scripted engine's fault model: each fault recurs with a documented probability after each
kind of action, so no action cures by construction and a policy that never retunes fails more."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from agents.config import load_settings
from agents.engines.base import GenRequest
from agents.engines.scripted import ScriptedEngine, recur_probability
from agents.models import AgentRecord, AgentSpec, GenerationParams, TaskStatus
from pool.driver.synthetic import synthetic_tasks
from pool.runtime.host import HostRuntime
from pool.store.checkpoint import CheckpointStore
from recovery.monitor import Monitor

BASE = GenRequest("a", "t", "sys", "q", GenerationParams())


@pytest.mark.parametrize(
    ("fault", "change", "p"),
    [("garbage", {"params": GenerationParams(temperature=0.7)}, 0.9),
     ("garbage", {"params": GenerationParams(temperature=0.0)}, 0.05),
     ("truncation", {}, 1.0), ("truncation", {"params": GenerationParams(max_tokens=192)}, 0.1),
     ("timeout", {}, 0.2), ("oom", {}, 1.0), ("oom", {"memory_compressed": True}, 0.3),
     ("oom", {"host_changed": True}, 0.05), ("crash", {}, 0.5), ("crash", {"host_changed": True}, 0.05),
     ("permanent", {"host_changed": True}, 1.0)],
)
def test_recurrence_after_each_kind_of_action(fault: str, change: dict, p: float) -> None:
    assert recur_probability(fault, dataclasses.replace(BASE, **change)) == pytest.approx(p)


def _failed(tmp_path: Path, mode: str) -> Counter[str]:
    settings = load_settings(overrides={"engine": {"kind": "scripted", "seed": 3},
                                        "recovery": {"mode": mode, "backoff_base_s": 0.0}})
    store = CheckpointStore(tmp_path / mode)
    store.write(AgentRecord(spec=AgentSpec(agent_id="agent-000000")), epoch=0)
    monitor = Monitor(settings.health, settings.recovery, clock=lambda: 0.0)
    host = HostRuntime("h0", settings, ScriptedEngine(settings.engine), store, monitor.assess,
                       clock=lambda: 0.0, sleep=lambda s: None)
    host.bind("agent-000000", None, epoch=1)
    todo = [(t, None) for t in synthetic_tasks(400, agents=1, seed=3)]
    statuses: Counter[str] = Counter()
    while todo:  # a task handed back to move runs again here, as on its new Host
        outcomes = host.run(todo, headroom=0.5)
        todo = [(o.task, o.carry) for o in outcomes if o.result is None]
        statuses.update(o.result.status.value for o in outcomes if o.result is not None)
    return statuses


def test_a_policy_that_never_retunes_fails_more_than_tiered(tmp_path: Path) -> None:
    naive, tiered = _failed(tmp_path, "naive"), _failed(tmp_path, "tiered")
    assert sum(naive.values()) == sum(tiered.values()) == 400
    assert tiered[TaskStatus.FAILED.value] * 3 < naive[TaskStatus.FAILED.value], (naive, tiered)
