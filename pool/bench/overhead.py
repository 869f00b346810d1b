"""Pool overhead: what the pool costs over calling the engine directly.

Scripted engine at zero cost, no faults: agent-steps per second through the whole pool
(PoolManager -> Host -> HealthMonitor, checkpoints committed after every batch) against bare Ray
actor calls doing the same number of steps (one call per step, spread over as many actors as the
pool has Hosts). Real model: the pool answering a subset of the shipped tasks against a bare
llama.cpp loop answering the same tasks in one process. Both sides alternate, repetition by
repetition; one pool serves every repetition (fresh task ids each time), so Host start-up and
model loading are outside the timings on both sides.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray

from agents.config import EngineConfig
from agents.engines.base import GenRequest
from agents.engines.factory import make_engine
from agents.models import AgentSpec, Task
from pool.bench.common import NO_FAULTS, Say, ratio, settings, start_pool, stats
from pool.bench.workload import shipped
from pool.synthetic import synthetic_tasks


@ray.remote(num_cpus=0)
class BareEngine:
    """A Ray actor around an engine and nothing else: the baseline."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.engine = make_engine(cfg, n_threads=1)

    def step(self, req: GenRequest) -> int:
        return self.engine.generate(req).completion_tokens


def _request(task: Task, spec: AgentSpec) -> GenRequest:
    params = spec.generation
    if task.max_tokens:
        params = params.model_copy(update={"max_tokens": task.max_tokens})
    return GenRequest(agent_id=task.agent_id, task_id=task.task_id,
                      system_prompt=spec.system_prompt, prompt=task.prompt, params=params,
                      kind=task.kind, json_schema=task.json_schema, labels=task.labels,
                      expected=task.expected)


def _renamed(tasks: list[Task], rep: int) -> list[Task]:
    return [t.model_copy(update={"task_id": f"{t.task_id}-r{rep}"}) for t in tasks]


def scripted(steps: int, agents: int, reps: int, root: Any, say: Say) -> dict[str, Any]:
    cfg = settings("scripted", engine={"faults": NO_FAULTS})
    specs = [AgentSpec(agent_id=f"agent-{i:06d}") for i in range(agents)]
    by_id = {s.agent_id: s for s in specs}
    pool = start_pool(cfg, root / "checkpoints")
    bare = [BareEngine.remote(cfg.engine)  # type: ignore[attr-defined]
            for _ in range(cfg.pool.slots_per_gpu)]
    try:
        pool.register(specs)
        ray.get([b.step.remote(_request(t, by_id[t.agent_id]))
                 for b, t in zip(bare, synthetic_tasks(len(bare), agents), strict=True)])
        pool_rates, bare_rates = [], []
        for rep in range(reps):
            tasks = synthetic_tasks(steps, agents, seed=rep, prefix=f"o{rep}-")
            wall = pool.run(tasks)
            done = sum(t.task_id in pool.results for t in tasks)
            pool_rates.append(done / wall)
            started = time.perf_counter()
            ray.get([bare[i % len(bare)].step.remote(_request(t, by_id[t.agent_id]))
                     for i, t in enumerate(tasks)])
            bare_rates.append(steps / (time.perf_counter() - started))
            say(f"  overhead rep {rep + 1} / {reps}: pool {pool_rates[-1]:.0f} steps/s, "
                f"bare {bare_rates[-1]:.0f} steps/s")
    finally:
        pool.stop()
        for b in bare:
            ray.kill(b, no_restart=True)
    p, b = stats(pool_rates), stats(bare_rates)
    return {"steps": steps, "agents": agents, "hosts": cfg.pool.slots_per_gpu, "reps": reps,
            "pool_steps_per_s": p, "bare_steps_per_s": b, "ratio_p50": ratio(p["p50"], b["p50"])}


def real_model(limit: int, reps: int, root: Any, say: Say, slots: int | None = None) -> dict[str, Any]:
    """Pool vs a bare llama.cpp loop on the same tasks: one attempt each (recovery none) and no
    memory in the prompts, so that both sides do the same model work."""
    pool_cfg: dict[str, Any] = {"slots_per_gpu": slots} if slots else {}
    cfg = settings("llama_cpp", recovery={"mode": "none"}, engine={"memory_tokens": 0},
                   pool=pool_cfg)
    tasks, specs = shipped(limit)
    by_id = {s.agent_id: s for s in specs}
    say(f"  real model: starting {cfg.pool.slots_per_gpu} llama.cpp Hosts")
    pool = start_pool(cfg, root / "checkpoints")
    bare_cfg = cfg.engine.model_copy(update={"kv_snapshot": False})  # llama.cpp as it comes
    engine = make_engine(bare_cfg, n_threads=os.cpu_count() or 1)
    rows: dict[str, list[float]] = {"pool_tasks_per_s": [], "bare_tasks_per_s": [],
                                    "pool_tokens_per_s": [], "bare_tokens_per_s": []}
    try:
        pool.register(specs)
        for rep in range(reps):
            batch = _renamed(tasks, rep)
            wall = pool.run(batch)
            done = [pool.results[t.task_id] for t in batch if t.task_id in pool.results]
            rows["pool_tasks_per_s"].append(len(done) / wall)
            rows["pool_tokens_per_s"].append(sum(r.tokens for r in done) / wall)
            started, tokens = time.perf_counter(), 0
            for t in batch:
                g = engine.generate(_request(t, by_id[t.agent_id]))
                tokens += g.prompt_tokens + g.completion_tokens
            elapsed = time.perf_counter() - started
            rows["bare_tasks_per_s"].append(len(batch) / elapsed)
            rows["bare_tokens_per_s"].append(tokens / elapsed)
            say(f"  real model rep {rep + 1} / {reps}: pool {rows['pool_tasks_per_s'][-1]:.2f} "
                f"tasks/s, bare {rows['bare_tasks_per_s'][-1]:.2f} tasks/s")
    finally:
        pool.stop()
        engine.close()
    out: dict[str, Any] = {"tasks": len(tasks), "reps": reps, "hosts": cfg.pool.slots_per_gpu,
                           **{k: stats(v) for k, v in rows.items()}}
    out["ratio_tasks_p50"] = ratio(out["pool_tasks_per_s"]["p50"], out["bare_tasks_per_s"]["p50"])
    out["ratio_tokens_p50"] = ratio(out["pool_tokens_per_s"]["p50"], out["bare_tokens_per_s"]["p50"])
    return out
