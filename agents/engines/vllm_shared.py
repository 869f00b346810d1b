"""The Ray edge of the vLLM engine: one shared engine actor per GPU, and the Hosts' client.

`VllmEngineActor` is an async Ray actor that holds a `VllmCore` (one `AsyncLLM`). It is named per
node and GPU (and per engine settings, so a changed config never reuses a stale engine) in the
pool's namespace, and created with `get_if_exists` by whichever Host of that GPU needs it first:
the weights load once per GPU, and the concurrent calls of the GPU's Hosts are awaited together,
so vLLM batches them. The actor is detached: it must not die with the Host that happened to
create it. Its process sees only its GPU (CUDA_VISIBLE_DEVICES is set before vLLM is imported).

`VllmEngine` is the Engine a Host's runtime calls. `generate` is one Ray call; a lost engine actor
(killed, crashed, its node gone) becomes `EngineFault(CRASH)`, so recovery retries or migrates the
task, and the next call looks the actor up again, creating a fresh one if it is gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util import list_named_actors
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agents.config import EngineConfig, PoolConfig
from agents.engines.base import GenRequest, GenResult
from agents.errors import EngineFault, FaultClass, SelfhealError

PREFIX = "vllm-engine"


def engine_name(cfg: EngineConfig, node_id: str, gpu: str) -> str:
    """`vllm-engine-<node>-<gpu>-<settings hash>`: one engine per GPU and engine config."""
    key = cfg.model_dump_json(include={"model_path", "n_ctx", "gpu_memory_utilization", "seed"})
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"{PREFIX}-{node_id[:8]}-{gpu}-{digest}"


@ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1000)  # type: ignore[call-overload]
class VllmEngineActor:
    def __init__(self, cfg: EngineConfig, budget_mib: int, gpu: str | None) -> None:
        if gpu is not None:  # before torch/vLLM look at the devices
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        from agents.engines.vllm import VllmCore

        self.core = VllmCore(cfg, budget_mib)

    async def generate(self, req: GenRequest) -> GenResult:
        try:
            return await self.core.generate(req)
        finally:
            if self.core.dead:  # the engine core process is gone: end this actor so that the
                asyncio.get_running_loop().call_later(0.2, os._exit, 1)  # next call starts anew

    async def sleep(self) -> bool:
        return await self.core.sleep()

    async def wake_up(self) -> bool:
        return await self.core.wake_up()

    def measure(self) -> dict[str, Any]:
        return self.core.measure()

    def info(self) -> dict[str, Any]:
        return {**self.core.info(), "pid": os.getpid()}


def engine_actor(cfg: EngineConfig, pool: PoolConfig, node_id: str, gpu: str) -> Any:
    """The GPU's engine actor, created on first use (a no-op handle lookup afterwards)."""
    cuda_id = gpu if ray.get_gpu_ids() else None  # the caller holds that GPU: pin the engine to it
    return VllmEngineActor.options(  # type: ignore[attr-defined]
        name=engine_name(cfg, node_id, gpu), namespace=pool.namespace, get_if_exists=True,
        lifetime="detached",
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(cfg, pool.budget_mib, cuda_id)


def engine_actors(namespace: str) -> list[Any]:
    """Handles of the engine actors alive in `namespace`."""
    names = list_named_actors(all_namespaces=True)
    return [ray.get_actor(n["name"], namespace=namespace) for n in names
            if n["namespace"] == namespace and n["name"].startswith(PREFIX)]


def engine_stats(namespace: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """`info()` of every engine actor: prefix-cache hit rate, footprint, start time."""
    out = []
    for handle in engine_actors(namespace):
        try:
            out.append(ray.get(handle.info.remote(), timeout=timeout_s))
        except (RayActorError, GetTimeoutError):
            continue  # an engine being replaced: its figures died with it
    return out


def engine_events(namespace: str) -> list[dict[str, Any]]:
    """One `engine.stats` event per engine, for a run's events.jsonl and summary."""
    return [{"event": "engine.stats", "ts": time.time(), "source": PREFIX, **s}
            for s in engine_stats(namespace)]


def shutdown_engines(namespace: str) -> int:
    """Kill the engine actors of `namespace` (they are detached); returns how many."""
    handles = engine_actors(namespace)
    for handle in handles:
        ray.kill(handle, no_restart=True)
    return len(handles)


class VllmEngine:
    """A Host's view of its GPU's shared engine (the Engine protocol)."""

    name = "vllm"

    def __init__(self, cfg: EngineConfig, pool: PoolConfig | None = None) -> None:
        self.cfg = cfg
        self.pool = pool or PoolConfig()
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self.gpu = str((ray.get_gpu_ids() or [0])[0])
        self._handle: Any = engine_actor(cfg, self.pool, self.node_id, self.gpu)  # starts loading

    def _actor(self) -> Any:
        if self._handle is None:
            self._handle = engine_actor(self.cfg, self.pool, self.node_id, self.gpu)
        return self._handle

    def call(self, method: str, *args: Any, reconnect: bool = True) -> Any:
        """One call on the engine actor. Errors raised by the engine keep their own class. A lost
        actor is a CRASH fault for the first Host that sees it, which also starts a replacement
        at once (it loads while recovery decides); a Host whose handle is stale but finds the
        replacement already there reconnects instead of failing a second time."""
        handle = self._actor()
        try:
            return ray.get(getattr(handle, method).remote(*args))
        except RayActorError as exc:
            if reconnect and self._replaced(handle):
                return self.call(method, *args, reconnect=False)
            self._handle = engine_actor(self.cfg, self.pool, self.node_id, self.gpu)
            raise EngineFault(FaultClass.CRASH, f"vllm engine actor lost: {_first_line(exc)}") from None
        except RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, SelfhealError) else None
            if cause is None:
                raise EngineFault(FaultClass.CRASH, f"vllm engine: {_first_line(exc)}") from None
            raise cause from None

    def _replaced(self, dead: Any) -> bool:
        """True (and the handle swapped) when another actor now holds the engine's name."""
        name = engine_name(self.cfg, self.node_id, self.gpu)
        try:
            live = ray.get_actor(name, namespace=self.pool.namespace)
        except ValueError:
            return False
        if live._actor_id == dead._actor_id:
            return False
        self._handle = live
        return True

    def generate(self, req: GenRequest) -> GenResult:
        result: GenResult = self.call("generate", req)
        return result

    def info(self) -> dict[str, Any]:
        """Footprint (`reserved_mib`, `measured_mib` with a GPU), start time, cache figures."""
        info: dict[str, Any] = self.call("info")
        return info

    def sleep(self) -> bool:
        """Pause the engine (vLLM sleep level 1); False: it cannot, park the agents instead."""
        slept: bool = self.call("sleep")
        return slept

    def wake_up(self) -> bool:
        woke: bool = self.call("wake_up")
        return woke

    def measure(self) -> dict[str, Any]:
        reading: dict[str, Any] = self.call("measure")
        return reading

    def save_state(self, agent_id: str) -> bytes | None:
        return None  # KV lives in the shared prefix cache, not per agent

    def load_state(self, agent_id: str, blob: bytes) -> bool:
        return False

    def close(self) -> None:
        self._handle = None  # the engine is shared: other Hosts still use it


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "cause", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
