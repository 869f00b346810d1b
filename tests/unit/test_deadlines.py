"""Deadlines are enforced: a generation still running at deadline_s x recovery.deadline_factor is
cut and is a TIMEOUT fault, in the scripted engine, llama.cpp's request and the Host's wait on a
shared engine actor. No Ray is started: the shared client's `ray.get` is a fake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents.config import EngineConfig, load_settings
from agents.engines.base import GenRequest
from agents.engines.llama_server import LlamaServerCore
from agents.engines.scripted import ScriptedEngine
from agents.errors import EngineFault, FaultClass
from agents.models import AgentRecord, AgentSpec, GenerationParams, Task, TaskStatus
from pool.runtime.host import HostRuntime
from pool.store.checkpoint import CheckpointStore
from recovery.monitor import Monitor

NO_FAULTS = dict.fromkeys(("garbage", "truncation", "timeout", "oom", "crash", "permanent"), 0.0)


def _req(**kw: Any) -> GenRequest:
    return GenRequest(**{"agent_id": "a1", "task_id": "t", "system_prompt": "", "prompt": "p",
                         "params": GenerationParams(max_tokens=50), **kw})


def test_a_scripted_generation_past_deadline_times_factor_is_cut_as_a_timeout(tmp_path: Path) -> None:
    settings = load_settings(overrides={
        "engine": {"kind": "scripted", "faults": NO_FAULTS, "step_cost_s": 100.0},
        "recovery": {"backoff_base_s": 0.0, "deadline_factor": 3.0}})
    slept: list[float] = []
    engine = ScriptedEngine(settings.engine, sleep=slept.append)
    store = CheckpointStore(tmp_path)
    store.write(AgentRecord(spec=AgentSpec(agent_id="a1")), epoch=0)
    monitor = Monitor(settings.health, settings.recovery, clock=lambda: 0.0)
    host = HostRuntime("h0", settings, engine, store, monitor.assess, sleep=lambda s: None)
    host.bind("a1", None, epoch=1)
    task = Task(task_id="slow", agent_id="a1", prompt="p", deadline_s=2.0)
    (outcome,) = host.run([(task, None)], headroom=0.5)
    attempts = settings.recovery.max_attempts
    assert slept == [6.0] * attempts  # each attempt waited 2 s x 3, never the 100 s step
    assert outcome.result.status is TaskStatus.FAILED and outcome.result.attempts == attempts
    assert "timeout" in outcome.result.error


def test_a_scripted_generation_within_the_limit_is_not_cut() -> None:
    slept: list[float] = []
    engine = ScriptedEngine(EngineConfig(kind="scripted", faults=NO_FAULTS, step_cost_s=5.0),
                            sleep=slept.append)
    assert engine.generate(_req(timeout_s=6.0)).text
    assert engine.generate(_req()).text  # no limit
    with pytest.raises(EngineFault) as cut:
        engine.generate(_req(timeout_s=4.0))
    assert cut.value.fault is FaultClass.TIMEOUT and slept == [5.0, 5.0, 4.0]


def test_llama_requests_carry_the_limit_and_a_cut_answer_is_a_timeout() -> None:
    assert LlamaServerCore._time_limit(_req()) == {}
    assert LlamaServerCore._time_limit(_req(timeout_s=2.5)) == {"t_max_predict_ms": 2500}
    body = {"max_tokens": 50, "t_max_predict_ms": 1}
    # as llama-server answered when its time limit stopped a 200-token answer after 8 tokens
    cut = {"choices": [{"finish_reason": "length"}], "usage": {"completion_tokens": 8},
           "timings": {"predicted_ms": 73.1}}
    assert LlamaServerCore._cut_by_time(body, cut)
    full = {**cut, "usage": {"completion_tokens": 50}}  # the token limit, not the clock
    assert not LlamaServerCore._cut_by_time(body, full)
    assert not LlamaServerCore._cut_by_time({"max_tokens": 50}, cut)  # no limit asked
    stopped = {**cut, "choices": [{"finish_reason": "stop"}]}
    assert not LlamaServerCore._cut_by_time(body, stopped)


class _Method:
    def __init__(self, name: str, calls: list[tuple[str, tuple[Any, ...]]]) -> None:
        self.name, self.calls = name, calls

    def remote(self, *args: Any) -> str:
        self.calls.append((self.name, args))
        return f"ref-{self.name}"


class _Handle:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> _Method:
        return _Method(name, self.calls)


def test_the_hosts_wait_on_a_shared_engine_is_bounded_by_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray.exceptions import GetTimeoutError

    from agents.engines import llama_shared, shared

    waits: list[float | None] = []
    cancelled: list[str] = []

    def hung_get(ref: str, timeout: float | None = None) -> Any:
        waits.append(timeout)
        raise GetTimeoutError(f"{ref} not ready")

    monkeypatch.setattr(shared.ray, "get", hung_get)
    monkeypatch.setattr(shared.ray, "cancel", lambda ref, **kw: cancelled.append(ref))
    engine = object.__new__(llama_shared.LlamaEngine)  # no actor: its handle is a fake
    engine.slot, engine.prefix, engine._handle = 0, "llama-engine", _Handle()
    with pytest.raises(EngineFault) as err:
        engine.generate(_req(timeout_s=6.0))
    assert err.value.fault is FaultClass.TIMEOUT and "6" in str(err.value)
    assert waits == [6.0] and cancelled == ["ref-generate"]
