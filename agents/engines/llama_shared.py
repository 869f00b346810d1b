"""The llama.cpp engine's Ray edge: one engine actor per GPU, each resident agent a slot in it.

`LlamaEngineActor` is a threaded Ray actor holding a `LlamaServerCore`: the calls of the GPU's
Hosts run on their own threads at once, and llama-server batches their slots (continuous
batching). It takes every core of its node (CPU) or all layers on its GPU. Naming, lookup and
healing of a lost engine are the shared engine's (`agents.engines.shared`).

`LlamaEngine` is the Engine a Host holds: the Host's slot index `slot` is its agent's place in
the engine, so `save_state` / `load_state` move the resident agent's KV between the slot and its
checkpoint (or, for the hot tier, a reference to the engine's kept copy: `kv_reference`), and
`kv_tokens` is what the slot holds (the ledger counts it).
"""

from __future__ import annotations

import os
from typing import Any

import ray

from agents.config import EngineConfig, PoolConfig
from agents.engines.base import GenRequest, GenResult
from agents.engines.shared import LLAMA_PREFIX, SharedEngineClient, engine_name
from agents.engines.snapshot import reference


@ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1000)  # type: ignore[call-overload]
class LlamaEngineActor:
    def __init__(self, cfg: EngineConfig, slots: int, gpu: str | None) -> None:
        if gpu is not None:  # before llama.cpp looks at the devices
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        from agents.engines.llama_server import LlamaServerCore

        self.core = LlamaServerCore(cfg, slots)

    def generate(self, req: GenRequest, slot: int) -> GenResult:
        return self.core.generate(req, slot)

    def save_slot(self, slot: int) -> bytes | None:
        return self.core.save_slot(slot)

    def restore_slot(self, slot: int, blob: bytes | None) -> int:
        return self.core.restore_slot(slot, blob)

    def measure(self) -> dict[str, Any]:
        return self.core.measure()

    def metrics(self) -> dict[str, float]:
        return self.core.metrics()

    def info(self) -> dict[str, Any]:
        return {**self.core.info(), "pid": os.getpid()}


class LlamaEngine(SharedEngineClient):
    """A Host's view of its GPU's shared llama.cpp engine: slot `slot` of `slots`."""

    name = "llama_cpp"
    prefix = LLAMA_PREFIX

    def __init__(self, cfg: EngineConfig, pool: PoolConfig | None, slot: int, slots: int) -> None:
        self.slot, self.slots = slot, slots
        self.kv_tokens = 0  # tokens the slot holds, as the engine last said
        super().__init__(cfg, pool)

    def _name(self) -> str:
        return engine_name(self.prefix, self.cfg, self.node_id, self.gpu, self.slots)

    def _spawn(self, options: dict[str, Any], cuda_id: str | None) -> Any:
        return LlamaEngineActor.options(**options).remote(  # type: ignore[attr-defined]
            self.cfg, self.slots, cuda_id)

    def generate(self, req: GenRequest) -> GenResult:
        result: GenResult = self.call("generate", req, self.slot, timeout_s=req.timeout_s)
        self.kv_tokens = int(result.extra.get("slot_tokens", 0))
        return result

    def save_state(self, agent_id: str) -> bytes | None:
        blob: bytes | None = self.call("save_slot", self.slot)
        return blob

    def load_state(self, agent_id: str, blob: bytes | None) -> bool | None:
        """Restore the agent's KV into the slot; None (or a foreign snapshot) empties it. A
        reference whose kept copy is gone empties it too and answers None."""
        restored = int(self.call("restore_slot", self.slot, blob))
        self.kv_tokens = max(restored, 0)
        return None if restored < 0 else restored > 0

    @staticmethod
    def kv_reference(blob: bytes) -> bytes | None:
        return reference(blob)
