"""The vLLM engine's Ray edge: its shared engine actor per GPU, and the Hosts' client.

`VllmEngineActor` is an async Ray actor that holds a `VllmCore` (one `AsyncLLM`); the calls of
the GPU's Hosts are awaited together, so vLLM batches them. Its process sees only its GPU
(CUDA_VISIBLE_DEVICES is set before vLLM is imported). Naming, lookup and healing of a lost
engine are the shared engine's (`agents.engines.shared`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray

from agents.config import EngineConfig
from agents.engines.base import GenRequest, GenResult
from agents.engines.shared import VLLM_PREFIX, SharedEngineClient


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


class VllmEngine(SharedEngineClient):
    """A Host's view of its GPU's shared vLLM engine (the Engine protocol)."""

    name = "vllm"
    prefix = VLLM_PREFIX

    def _spawn(self, options: dict[str, Any], cuda_id: str | None) -> Any:
        return VllmEngineActor.options(**options).remote(  # type: ignore[attr-defined]
            self.cfg, self.pool.budget_mib, cuda_id)

    def generate(self, req: GenRequest) -> GenResult:
        result: GenResult = self.call("generate", req, timeout_s=req.timeout_s)
        return result

    def sleep(self) -> bool:
        """Pause the engine (vLLM sleep level 1); False: it cannot, park the agents instead."""
        slept: bool = self.call("sleep")
        return slept

    def wake_up(self) -> bool:
        woke: bool = self.call("wake_up")
        return woke

    def save_state(self, agent_id: str) -> bytes | None:
        return None  # KV lives in the shared prefix cache, not per agent

    def load_state(self, agent_id: str, blob: bytes | None) -> bool:
        return False
