"""Internal messages of the monitor loop: frozen, slotted dataclasses.

`Signals` is what one execution produced; `HealthReport` is its score; `Decision` is what to do
next. A `History` is an agent's supervision record and travels with the agent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from typing import Any

from agents.errors import FaultClass
from agents.models import TaskKind


@dataclass(frozen=True, slots=True)
class Signals:
    text: str  # the answer ("" when the engine raised)
    finish_reason: str  # "stop", "length", or "error"
    kind: TaskKind
    elapsed_s: float
    deadline_s: float
    memory_headroom: float  # 1 - used/limit of the VRAM ledger after the step, in [0, 1]
    json_schema: dict[str, Any] | None = None
    labels: tuple[str, ...] | None = None
    max_chars: int | None = None  # the task's length limit (a contract), if it states one
    pattern: str | None = None  # the answer's shape (RE2 syntax, a contract), if the task states one
    peers: tuple[str, ...] = ()  # other agents' answers to the same prompt
    own_past: tuple[str, ...] = ()  # this agent's earlier answers to the same prompt
    samples: tuple[str, ...] = ()  # this step's other votes (self-consistency), if it voted
    fault: FaultClass = FaultClass.NONE  # set when the engine raised
    # the tiers the task has used so far: they travel with the task (the Host's Carry), like its
    # attempt count, so the monitor keeps no per-task state and a restarted one keeps the cap
    tiers_used: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class HealthReport:
    score: float
    coherence: float
    completeness: float
    latency: float
    memory: float
    consistency: float
    fault: FaultClass  # NONE when healthy; otherwise the most likely cause
    healthy: bool
    reason: str = ""

    def components(self) -> dict[str, float]:
        return {
            "coherence": self.coherence,
            "completeness": self.completeness,
            "latency": self.latency,
            "memory": self.memory,
            "consistency": self.consistency,
        }


class Action(StrEnum):
    ACCEPT = "accept"  # healthy, or recovery disabled: keep the answer
    RETRY = "retry"  # tier 1: same Host, re-tuned parameters, after a backoff
    COMPRESS = "compress"  # tier 2: shrink the agent's memory, drop KV state, retry
    MIGRATE = "migrate"  # tier 2: move the agent to another Host, retry
    FAIL_TASK = "fail_task"  # tier 3: dead-letter the task; the agent carries on
    FAIL_AGENT = "fail_agent"  # tier 3: supervision limit crossed; the agent goes FAILED


class Tier(IntEnum):
    NONE = 0
    MINOR = 1
    RESOURCES = 2
    SEVERE = 3


@dataclass(frozen=True, slots=True)
class Retune:
    """Parameter changes for the next attempt; the defaults keep the current values."""

    temperature: float | None = None  # absolute new temperature
    max_tokens_factor: float = 1.0  # multiply the token limit (cut-off answers)
    constrain: bool = False  # schema / label constrained decoding
    drop_kv: bool = False


@dataclass(frozen=True, slots=True)
class History:
    restarts: tuple[float, ...] = ()  # times of recovery attempts inside the supervision window
    attempts: int = 0  # attempts on the current task
    floor: Tier = Tier.NONE  # escalated tier: later recoveries start at least here
    tiers_used: tuple[int, ...] = ()  # tiers used on the current task

    def for_new_task(self) -> History:
        return replace(self, attempts=0, tiers_used=())


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    tier: Tier
    history: History
    reason: str
    delay_s: float = 0.0
    retune: Retune = field(default_factory=Retune)
