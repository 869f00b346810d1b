"""Build the configured engine; the only place that knows every engine module."""

from __future__ import annotations

from agents.config import EngineConfig, EngineKind, PoolConfig
from agents.engines.base import Engine


def make_engine(
    cfg: EngineConfig, pool: PoolConfig | None = None, slot: int = 0, slots: int = 1
) -> Engine:
    """`pool` (namespace, VRAM budget) matters to the shared engines (one actor per GPU), and a
    llama.cpp Host's `slot` of the engine's `slots` is its resident agent's KV slot."""
    if cfg.kind is EngineKind.SCRIPTED:
        from agents.engines.scripted import ScriptedEngine

        return ScriptedEngine(cfg)
    if cfg.kind is EngineKind.LLAMA_CPP:
        from agents.engines.llama_shared import LlamaEngine  # the Ray client; llama.cpp in its actor

        return LlamaEngine(cfg, pool, slot, slots)
    from agents.engines.vllm_shared import VllmEngine  # the Ray client; vLLM runs in its actor

    return VllmEngine(cfg, pool)
