"""A Host runtime over the scripted engine, a real store and the monitor's logic, for unit tests."""

from pathlib import Path

from agents.config import load_settings
from agents.engines.scripted import ScriptedEngine
from agents.models import AgentRecord, AgentSpec, Task
from pool.runtime.host import HostRuntime
from pool.store.checkpoint import CheckpointStore
from recovery.monitor import Monitor

ONLY = {"garbage": 0.0, "truncation": 0.0, "timeout": 0.0, "oom": 0.0, "crash": 0.0, "permanent": 0.0}


def make_host(
    tmp_path: Path, fault: str | None, mode: str = "tiered"
) -> tuple[HostRuntime, CheckpointStore]:
    rates = dict(ONLY)
    if fault:
        rates[fault] = 1.0
    settings = load_settings(overrides={"engine": {"kind": "scripted", "faults": rates},
                                        "recovery": {"mode": mode, "backoff_base_s": 0.0}})
    store = CheckpointStore(tmp_path)
    store.write(AgentRecord(spec=AgentSpec(agent_id="a1")), epoch=0)
    monitor = Monitor(settings.health, settings.recovery, clock=lambda: 0.0)
    host = HostRuntime("h0", settings, ScriptedEngine(settings.engine), store, monitor.assess,
                       sleep=lambda s: None)
    host.bind("a1", None, epoch=1)
    return host, store


def make_tasks(n: int) -> list:
    return [(Task(task_id=f"t{i}", agent_id="a1", prompt=f"What is {i}+1?", kind="answer",
                  expected=str(i + 1)), None) for i in range(n)]
