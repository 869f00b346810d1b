"""Host RAM with 12 residents: the shared engine and its Hosts against an engine per Host.

Pool: 12 Hosts bound to 12 agents, each having answered one task through the GPU's one llama.cpp
engine. Baseline: the design the shared engine replaced, 12 Ray actors each with its own llama.cpp
engine (one slot of the same context) answering the same task. Both sides are summed over their
processes: RSS (what `top` shows; the mmap'd weights count in every process that touched them) and
PSS (shared pages split among their processes: what the processes really cost together).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray

from agents.config import EngineConfig
from agents.engines.base import GenRequest
from agents.engines.gpumem import process_memory
from agents.models import AgentSpec, GenerationParams, Task
from pool.bench.common import Pool, Say, ratio, settings, start_pool

PROMPT = "Name one planet of the solar system."


def _sum(pids: list[int]) -> dict[str, float]:
    parts = [process_memory(p) for p in pids]
    return {"processes": len(pids), "rss_mib": round(sum(p["rss_mib"] for p in parts), 1),
            "pss_mib": round(sum(p["pss_mib"] for p in parts), 1)}


@ray.remote(num_cpus=0)
class EnginePerHost:
    """The replaced design: a Host process with a llama.cpp engine of its own."""

    def __init__(self, cfg: EngineConfig, threads: int) -> None:
        from agents.engines.llama_server import LlamaServerCore

        self.core = LlamaServerCore(cfg, slots=1, n_threads=threads)

    def answer(self, req: GenRequest) -> int:
        self.core.generate(req, 0)
        return os.getpid()


def _pool_side(pool: Pool, residents: int) -> dict[str, float]:
    specs = [AgentSpec(agent_id=f"ram-{i:03d}") for i in range(residents)]
    pool.register(specs)
    pool.run([Task(task_id=f"ram-t{i}", agent_id=s.agent_id, prompt=PROMPT, max_tokens=8)
              for i, s in enumerate(specs)])
    status = ray.get(pool.manager.status.remote())
    assert sum(1 for h in status["hosts"] if h["agent"]) == residents, "every Host holds an agent"
    hosts = [ray.get_actor(h["host"], namespace=pool.settings.pool.namespace) for h in status["hosts"]]
    infos: list[dict[str, Any]] = ray.get([h.info.remote() for h in hosts])
    pids = [int(i["pid"]) for i in infos]
    from agents.engines.shared import engine_stats

    engines = [int(e["pid"]) for e in engine_stats(pool.settings.pool.namespace)]
    return {**_sum(pids + engines), "hosts": len(pids), "engines": len(engines)}


def host_ram(residents: int, root: Path, say: Say) -> dict[str, Any]:
    cfg = settings("llama_cpp", pool={"slots_per_gpu": residents}, recovery={"mode": "none"})
    say(f"  host RAM: pool with {residents} residents on one shared engine")
    pool = start_pool(cfg, root / "checkpoints")
    try:
        shared = _pool_side(pool, residents)
    finally:
        pool.stop()
    say(f"  host RAM: {residents} actors with an engine each")
    threads = max(1, (os.cpu_count() or 1) // residents)  # as the replaced design split the cores
    actors = [EnginePerHost.remote(cfg.engine, threads) for _ in range(residents)]  # type: ignore[attr-defined]
    try:
        req = GenRequest("ram", "ram-t", "You are a brief assistant.", PROMPT,
                         GenerationParams(max_tokens=8))
        pids = ray.get([a.answer.remote(req) for a in actors])
        apart = _sum(pids)
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
    return {"residents": residents, "ctx": cfg.engine.n_ctx, "shared_engine": shared,
            "engine_per_host": apart,
            "ratio_rss": ratio(shared["rss_mib"], apart["rss_mib"]),
            "ratio_pss": ratio(shared["pss_mib"], apart["pss_mib"])}
