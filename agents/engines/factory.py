"""Build the configured engine; the only place that knows every engine module."""

from __future__ import annotations

from agents.config import EngineConfig, EngineKind, PoolConfig
from agents.engines.base import Engine


def make_engine(
    cfg: EngineConfig, n_threads: int | None = None, pool: PoolConfig | None = None
) -> Engine:
    """`pool` (namespace, VRAM budget) matters to the vllm engine, shared per GPU."""
    if cfg.kind is EngineKind.SCRIPTED:
        from agents.engines.scripted import ScriptedEngine

        return ScriptedEngine(cfg)
    if cfg.kind is EngineKind.LLAMA_CPP:
        from agents.engines.llama_cpp import LlamaCppEngine

        return LlamaCppEngine(cfg, n_threads=n_threads)
    from agents.engines.vllm_shared import VllmEngine  # the Ray client; vLLM runs in its actor

    return VllmEngine(cfg, pool)
