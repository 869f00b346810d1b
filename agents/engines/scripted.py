"""A deterministic engine with seeded fault injection and ground truth.

Each task draws one fault from `FaultRates` by a hash of (seed, task_id), so every policy sees
the same faults. A drawn fault always shows on the task's first attempt; on each later attempt
it recurs with a probability that depends on what the attempt changed (drawn from a hash of
seed, task and attempt), so no action cures a fault by construction and a wrong policy shows up
as failures (`recur_probability`):

- garbage (transient): degenerate text; recurs with p = 0.05 + 0.85 x min(1, T / 0.7) at
  temperature T (0.9 at the default 0.7, 0.29 at 0.2, 0.05 greedy).
- truncation (transient): the answer needs twice the default token limit; with that limit it
  recurs with p = 0.1, without it always.
- timeout (transient): the step stalls past its deadline; a retry recurs with p = 0.2.
- oom (resource): out of memory; recurs with p = 0.3 once the agent's memory is compressed,
  0.05 once it moved to another Host, always otherwise.
- crash (transient): the engine fails; recurs with p = 0.5 on the same Host, 0.05 on another.
- permanent: always recurs.

A step costs `EngineConfig.step_cost_s` (slept with the injected `sleep`); a step that would run
past the request's `timeout_s` (the task's deadline x `recovery.deadline_factor`) is cut there
and raises TIMEOUT, as a real engine's cut generation does.

Its device is simulated by `EngineConfig.device`: whether it can sleep (a sleeping engine refuses
to generate, so a pool that forgets to wake it fails loudly) and what pynvml would read per GPU.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

from agents.config import EngineConfig
from agents.engines.base import GenRequest, GenResult
from agents.engines.gpumem import visible_gpu
from agents.errors import EngineFault, FaultClass, GroundTruth
from agents.models import GenerationParams, TaskKind

_TRUTH = {
    "none": GroundTruth.NONE,
    "garbage": GroundTruth.TRANSIENT,
    "truncation": GroundTruth.TRANSIENT,
    "timeout": GroundTruth.TRANSIENT,
    "crash": GroundTruth.TRANSIENT,
    "oom": GroundTruth.RESOURCE,
    "permanent": GroundTruth.PERMANENT,
}
_LONG_ANSWER_TOKENS = 2 * GenerationParams().max_tokens  # a truncated answer needs this many
_GARBAGE = "the the the the the the the the the the the the the the the the the the \x00\x01"


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) from a hash of `parts` (stable across processes)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def fault_of(seed: int, task_id: str, rates: dict[str, float]) -> str:
    """Which fault (or "none") the task draws."""
    u, edge = _unit(seed, task_id), 0.0
    for name, rate in rates.items():
        edge += rate
        if u < edge:
            return name
    return "none"


def _fill(schema: dict[str, Any]) -> Any:
    """A value that validates against a simple JSON schema."""
    kind = schema.get("type", "string")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties", {})
        return {key: _fill(sub) for key, sub in props.items()}
    if kind == "array":
        return [_fill(schema.get("items", {}))]
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind, "value")


# The synthetic families it can work out (`pool.driver.synthetic`, and the sums of `scripts/make_tasks`).
_SUM = re.compile(r"(-?\d+)\s*(?:\+|plus)\s*(-?\d+)", re.IGNORECASE)
_PARITY = re.compile(r"is (-?\d+) plus (-?\d+) even or odd", re.IGNORECASE)


def correct_answer(req: GenRequest) -> str:
    """The simulated model's right answer, worked out from the request as a model would: it is
    never given the answer key (the grader's alone), so what it cannot work out it answers
    plausibly (the first label, a generic sentence) and the grader marks it wrong."""
    if req.kind is TaskKind.JSON and req.json_schema is not None:
        return json.dumps(_fill(req.json_schema))
    if req.kind is TaskKind.LABEL and req.labels:
        parity = _PARITY.search(req.prompt)
        word = ("even", "odd")[(int(parity[1]) + int(parity[2])) % 2] if parity else None
        return word if word in req.labels else req.labels[0]
    if req.kind is TaskKind.ANSWER and (total := _SUM.search(req.prompt)):
        return str(int(total[1]) + int(total[2]))
    return "A short and coherent answer to the question."


def recur_probability(fault: str, req: GenRequest) -> float:
    """How likely `fault` shows again on a later attempt shaped like `req` (see the module doc)."""
    if fault == "garbage":
        return 0.05 + 0.85 * min(1.0, req.params.temperature / 0.7)
    if fault == "truncation":
        return 0.1 if req.params.max_tokens >= _LONG_ANSWER_TOKENS else 1.0
    if fault == "timeout":
        return 0.2
    if fault == "oom":
        return 0.05 if req.host_changed else 0.3 if req.memory_compressed else 1.0
    if fault == "crash":
        return 0.05 if req.host_changed else 0.5
    return 1.0  # permanent


class ScriptedEngine:
    name = "scripted"

    def __init__(self, cfg: EngineConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = cfg
        self._wait = sleep  # a step's cost is slept (tests pass a fake); `sleep()` is the device's
        self.rates = cfg.faults.model_dump()
        self._states: dict[str, bytes] = {}
        self.asleep = False
        self._born = time.monotonic()
        self._steps = 0  # generate calls so far
        self._pressed_at: float | None = None  # when the simulated reading first arrived

    def generate(self, req: GenRequest) -> GenResult:
        started = time.perf_counter()
        if self.asleep:
            raise EngineFault(FaultClass.CRASH, "engine is asleep: wake_up() first")
        self._steps += 1
        if self.cfg.step_cost_s:
            self._spend(self.cfg.step_cost_s, req.timeout_s)
        fault = fault_of(self.cfg.seed, req.task_id, self.rates)
        truth = _TRUTH[fault]
        text, finish = self._answer(req, fault)
        tokens = max(1, len(text) // 4)
        prompt_tokens = (len(req.system_prompt) + len(req.prompt)) // 4 + 1
        return GenResult(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=tokens,
            elapsed_s=time.perf_counter() - started,
            truth=truth,
            extra={"fault": fault},
        )

    def _spend(self, cost_s: float, limit_s: float | None) -> None:
        """A step of `cost_s`; one that would run past `limit_s` is cut there (TIMEOUT)."""
        if limit_s is not None and cost_s > limit_s:
            self._wait(limit_s)
            raise EngineFault(FaultClass.TIMEOUT, f"generation cut at {limit_s:g} s (deadline x factor)")
        self._wait(cost_s)

    def _answer(self, req: GenRequest, fault: str) -> tuple[str, str]:
        shows = fault != "none" and (
            req.attempt == 0
            or _unit(self.cfg.seed, req.task_id, req.attempt, "recur") < recur_probability(fault, req))
        answer = correct_answer(req)
        if not shows:
            return answer, "stop"
        if fault == "oom":
            raise EngineFault(FaultClass.OOM, "CUDA out of memory (injected)", _TRUTH[fault])
        if fault == "timeout":
            raise EngineFault(FaultClass.TIMEOUT, "step passed its deadline (injected)", _TRUTH[fault])
        if fault == "crash":
            raise EngineFault(FaultClass.CRASH, "engine crashed (injected)", _TRUTH[fault])
        if fault == "truncation":
            return answer[: max(1, len(answer) // 2)], "length"
        return _GARBAGE, "stop"  # garbage, permanent

    def save_state(self, agent_id: str) -> bytes | None:
        return self._states.get(agent_id)

    def load_state(self, agent_id: str, blob: bytes | None) -> bool:
        if blob is None:
            self._states.pop(agent_id, None)
            return False
        self._states[agent_id] = blob
        return True

    def sleep(self) -> bool:
        self.asleep = self.cfg.device.can_sleep
        return self.asleep

    def wake_up(self) -> bool:
        woke, self.asleep = self.asleep, False
        return woke

    def measure(self) -> dict[str, Any]:
        used = self.cfg.device.used_mib
        if not used:
            return {"available": False, "reason": "no GPU: VRAM is not measured"}
        gpu = visible_gpu()  # one reading per device: every Host of the GPU returns the same id
        device, now = self.cfg.device, time.monotonic()
        if self._pressed_at is None and (now - self._born >= device.used_from_s
                                         and self._steps >= device.used_from_steps):
            self._pressed_at = now
        pressed = self._pressed_at is not None and not (
            device.used_for_s and now - self._pressed_at >= device.used_for_s)
        return {"available": True, "source": "simulated", "id": f"sim-gpu-{gpu}", "scope": "gpu",
                "used_mib": float(used.get(gpu, 0)) if pressed else 0.0}

    def close(self) -> None:
        self._states.clear()
