"""The Ray edge of a shared engine: one engine actor per GPU, and the Hosts' client of it.

An engine actor (llama.cpp server engine, vLLM) holds the model once per GPU. It is named per
node and GPU (and per engine settings, so a changed config never reuses a stale engine) in the
pool's namespace, and created with `get_if_exists` by whichever Host of that GPU needs it first.
It is detached: it must not die with the Host that happened to create it. The concurrent calls
of the GPU's Hosts reach it together, so the engine batches them.

`SharedEngineClient` is what a Host's runtime holds. A call is one Ray call; a lost engine actor
(killed, crashed, its node gone) becomes `EngineFault(CRASH)`, so recovery retries or migrates
the task, and the first Host that sees the loss starts a replacement at once. A generation is
waited for its request's `timeout_s` at most (the task's deadline x factor): a hung engine call
is `EngineFault(TIMEOUT)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError
from ray.util import list_named_actors
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agents.config import EngineConfig, PoolConfig
from agents.errors import EngineFault, FaultClass, SelfhealError

LLAMA_PREFIX, VLLM_PREFIX = "llama-engine", "vllm-engine"  # the actor names' first part
PREFIXES = (LLAMA_PREFIX, VLLM_PREFIX)


def engine_name(prefix: str, cfg: EngineConfig, node_id: str, gpu: str, *extra: object) -> str:
    """`<prefix>-<node>-<gpu>-<settings hash>`: one engine per GPU and engine config."""
    key = cfg.model_dump_json() + repr(extra)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"{prefix}-{node_id[:8]}-{gpu}-{digest}"


def engine_actors(namespace: str) -> list[Any]:
    """Handles of the engine actors alive in `namespace`."""
    names = list_named_actors(all_namespaces=True)
    return [ray.get_actor(n["name"], namespace=namespace) for n in names
            if n["namespace"] == namespace and n["name"].startswith(PREFIXES)]


def engine_stats(namespace: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """`info()` of every engine actor: footprint, cache figures, start time."""
    out = []
    for handle in engine_actors(namespace):
        try:
            out.append(ray.get(handle.info.remote(), timeout=timeout_s))
        except (RayActorError, GetTimeoutError):
            continue  # an engine being replaced: its figures died with it
    return out


def engine_events(namespace: str) -> list[dict[str, Any]]:
    """One `engine.stats` event per engine, for a run's events.jsonl and summary."""
    return [{"event": "engine.stats", "ts": time.time(), "source": "engine", **s}
            for s in engine_stats(namespace)]


def shutdown_engines(namespace: str) -> int:
    """Kill the engine actors of `namespace` (they are detached); returns how many."""
    handles = engine_actors(namespace)
    for handle in handles:
        ray.kill(handle, no_restart=True)
    return len(handles)


class SharedEngineClient:
    """A Host's handle on its GPU's shared engine actor. Subclasses say which actor (`_spawn`)."""

    prefix = ""

    def __init__(self, cfg: EngineConfig, pool: PoolConfig | None = None) -> None:
        self.cfg = cfg
        self.pool = pool or PoolConfig()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.gpu = str((ray.get_gpu_ids() or [0])[0])
        self._handle: Any = self._actor()  # starts loading

    def _name(self) -> str:
        return engine_name(self.prefix, self.cfg, self.node_id, self.gpu)

    def _spawn(self, options: dict[str, Any], cuda_id: str | None) -> Any:
        raise NotImplementedError

    def _actor(self) -> Any:
        """The GPU's engine actor, created on first use (a handle lookup afterwards)."""
        cuda_id = self.gpu if ray.get_gpu_ids() else None  # we hold that GPU: pin the engine to it
        options = {"name": self._name(), "namespace": self.pool.namespace, "get_if_exists": True,
                   "lifetime": "detached",
                   "scheduling_strategy": NodeAffinitySchedulingStrategy(self.node_id, soft=False)}
        return self._spawn(options, cuda_id)

    def call(
        self, method: str, *args: Any, reconnect: bool = True, timeout_s: float | None = None
    ) -> Any:
        """One call on the engine actor. Errors raised by the engine keep their own class. A lost
        actor is a CRASH fault for the first Host that sees it, which also starts a replacement
        (it loads while recovery decides); a Host whose handle is stale but finds the
        replacement already there reconnects instead of failing a second time. A call with no
        answer after `timeout_s` (a generation's deadline x factor) is a TIMEOUT fault: the Host
        stops waiting, and the call is cancelled (an async engine aborts it)."""
        handle = self._handle
        ref: Any = None
        try:
            ref = getattr(handle, method).remote(*args)
            return ray.get(ref, timeout=timeout_s)
        except GetTimeoutError:
            with contextlib.suppress(RayError):
                ray.cancel(ref)
            raise EngineFault(FaultClass.TIMEOUT, f"{self.prefix}: no answer in {timeout_s:g} s "
                              "(deadline x factor)") from None
        except RayActorError as exc:
            if reconnect and self._replaced(handle):
                return self.call(method, *args, reconnect=False, timeout_s=timeout_s)
            self._handle = self._actor()
            raise EngineFault(FaultClass.CRASH, f"{self.prefix} actor lost: {first_line(exc)}") from None
        except RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, SelfhealError) else None
            if cause is None:
                raise EngineFault(FaultClass.CRASH, f"{self.prefix}: {first_line(exc)}") from None
            raise cause from None

    def _replaced(self, dead: Any) -> bool:
        """True (and the handle swapped) when another actor now holds the engine's name."""
        try:
            live = ray.get_actor(self._name(), namespace=self.pool.namespace)
        except ValueError:
            return False
        if live._actor_id == dead._actor_id:
            return False
        self._handle = live
        return True

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.call("info")
        return info

    def measure(self) -> dict[str, Any]:
        reading: dict[str, Any] = self.call("measure")
        return reading

    def close(self) -> None:
        self._handle = None  # the engine is shared: other Hosts still use it


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "cause", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
