"""The Engine protocol: what a Host needs from a model runtime.

An engine turns a `GenRequest` (persona, bounded memory, prompt, sampling, optional constraint)
into a `GenResult`, or raises `EngineFault` with a fault class. Engines that can snapshot the KV
state of an agent's context implement `save_state`/`load_state`; others return None / ignore.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agents.errors import GroundTruth
from agents.models import GenerationParams, TaskKind, Turn


@dataclass(frozen=True, slots=True)
class GenRequest:
    agent_id: str
    task_id: str
    system_prompt: str
    prompt: str
    params: GenerationParams
    memory: tuple[Turn, ...] = ()
    kind: TaskKind = TaskKind.FREE
    json_schema: dict[str, Any] | None = None  # constrain output to this schema when `constrain`
    labels: tuple[str, ...] | None = None  # constrain output to one of these when `constrain`
    constrain: bool = False  # schema / choice constrained decoding (tier-1 retune)
    attempt: int = 0  # 0 for the first try; the scripted engine keys its faults on it
    memory_compressed: bool = False  # tier-2 compressed the memory before this attempt
    host_changed: bool = False  # tier-2 moved the agent to another Host before this attempt
    timeout_s: float | None = None  # cut the generation after this long (deadline x factor): TIMEOUT


@dataclass(frozen=True, slots=True)
class GenResult:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    elapsed_s: float
    cached_tokens: int = 0  # prompt tokens served from a KV snapshot / prefix cache
    truth: GroundTruth = GroundTruth.NONE  # scripted engine: what was injected
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    name: str

    def generate(self, req: GenRequest) -> GenResult:
        """Answer one request; raise `EngineFault` on timeout, OOM, crash. A generation still
        running after `req.timeout_s` is cut: `EngineFault(TIMEOUT)`."""
        ...

    def save_state(self, agent_id: str) -> bytes | None:
        """KV snapshot of the agent's current context, or None when unsupported."""
        ...

    def load_state(self, agent_id: str, blob: bytes | None) -> bool | None:
        """Restore a snapshot (None: start the agent's context empty); True when one was used.
        None: `blob` was a reference (`kv_reference`) to a copy the engine no longer keeps."""
        ...

    def close(self) -> None: ...


# Optional engine methods, looked up by the Host (`pool.runtime.host.HostRuntime`):
#   info() -> dict        figures; `base_mib`: what the engine holds on its GPU before any agent
#   sleep() -> bool       give the GPU back, keeping the engine (vLLM sleep level 1); False: cannot
#   wake_up() -> bool     undo sleep()
#   measure() -> dict     a reading as in `agents.engines.gpumem`
#   kv_tokens: int        tokens of KV the engine holds for the resident agent (the ledger counts them)
#   kv_reference(blob) -> bytes | None
#                         a short stand-in for a snapshot the engine keeps a copy of, which
#                         `load_state` takes instead (the hot tier carries it); None: keeps none
