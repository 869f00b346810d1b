"""Self-healing: one seeded fault mix, three recovery policies, identical faults.

The scripted engine draws each task's fault from a hash of (seed, task id), so every policy meets
the same faults, and it reports the ground truth of what it injected. From the results:

- false-positive failure: a task FAILED although its fault was transient or resource-bound
  (a better policy would have healed it);
- false negative: a task reported SUCCEEDED whose output differs from the engine's correct
  answer (`scripted.correct_answer`): the checker disagrees with the pool;
- lost: a submitted task with no terminal record; duplicates: more than one.

Budget fidelity comes from the same runs: the `pool.runtime.residency` events carry the VRAM ledger's
value and the residents per GPU after every scheduling pass, against its limit and slot cap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.engines.base import GenRequest
from agents.engines.scripted import correct_answer
from agents.models import AgentSpec, GenerationParams, Task, TaskResult, TaskStatus
from pool.bench.common import Pool, Say, settings, start_pool, stats
from pool.driver.synthetic import synthetic_tasks

# The same attempt cap for every policy (recovery.max_attempts): naive differs from tiered only
# in retrying with the same parameters.
POLICIES: dict[str, dict[str, Any]] = {
    "none": {"mode": "none"},
    "naive": {"mode": "naive"},
    "tiered": {"mode": "tiered"},
}
# What a careful user of llama-server does instead: one attempt, greedy, schema/label constrained.
CONSTRAINED = {"mode": "none", "greedy_constrained_first": True}
_HEALABLE = ("transient", "resource")


def _correct(task: Task) -> str:
    req = GenRequest(agent_id=task.agent_id, task_id=task.task_id, system_prompt="",
                     prompt=task.prompt, params=GenerationParams(), kind=task.kind,
                     json_schema=task.json_schema, labels=task.labels)
    return correct_answer(req)


def score(tasks: list[Task], results: dict[str, TaskResult], duplicates: int) -> dict[str, Any]:
    """The per-policy figures (pure: results and the tasks they answer)."""
    n = len(tasks)
    got = [results[t.task_id] for t in tasks if t.task_id in results]
    ok = [r for r in got if r.status is TaskStatus.SUCCEEDED]
    failed = [r for r in got if r.status is TaskStatus.FAILED]
    by_id = {t.task_id: t for t in tasks}
    wrong = [r for r in ok if r.output.strip() != _correct(by_id[r.task_id]).strip()]
    recovered = [r.elapsed_s for r in ok if r.attempts > 1]
    return {
        "tasks": n,
        "succeeded": len(ok),
        "failed": len(failed),
        "success_rate": len(ok) / n,
        "failed_rate": len(failed) / n,
        "false_positive_failures": sum(r.truth in _HEALABLE for r in failed),
        "failed_permanent": sum(r.truth == "permanent" for r in failed),
        "false_negatives": len(wrong),
        "lost": n - len(got),
        "duplicates": duplicates,
        "mean_attempts": sum(r.attempts for r in got) / len(got) if got else 0.0,
        "healed": len(recovered),
        "time_to_recovery_ms": stats(1000 * s for s in recovered),
        "tokens": sum(r.tokens for r in got),
    }


def budget(pool: Pool) -> dict[str, Any]:
    """Peak VRAM ledger and residents per GPU against the limit and the slot cap."""
    res = [e for e in pool.events if e["event"] == "pool.residency"]
    cfg = pool.settings.pool
    peak_used = max((e["used_mib"] for e in res), default=0.0)
    peak_res = max((e["residents"] for e in res), default=0)
    limit = cfg.budget_mib * cfg.watermark
    return {"samples": len(res), "peak_ledger_mib": peak_used, "limit_mib": limit,
            "budget_mib": cfg.budget_mib, "peak_residents_per_gpu": peak_res,
            "slots_per_gpu": cfg.slots_per_gpu,
            "ledger_crossed": sum(e["used_mib"] > limit for e in res),
            "slots_crossed": sum(e["residents"] > cfg.slots_per_gpu for e in res)}


def one_policy(name: str, tasks: list[Task], agents: int, root: Path, seed: int,
               say: Say) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = settings("scripted", engine={"seed": seed}, recovery=POLICIES[name])
    pool = start_pool(cfg, root / name / "checkpoints")
    try:
        pool.register([AgentSpec(agent_id=f"agent-{i:06d}", priority=i % 10) for i in range(agents)])
        wall = pool.run(tasks, say=say)
        figures = {**score(tasks, pool.results, pool.duplicates), "wall_s": wall,
                   "tasks_per_s": len(pool.results) / wall if wall else 0.0}
        return figures, budget(pool)
    finally:
        pool.stop()


def healing(n: int, agents: int, root: Path, seed: int, say: Say) -> dict[str, Any]:
    tasks = synthetic_tasks(n, agents, seed=seed, prefix="h")
    out: dict[str, Any] = {"tasks": n, "agents": agents, "seed": seed, "policies": {}, "budget": {}}
    for name in POLICIES:
        say(f"self-healing: policy {name}, {n:,} tasks on {agents:,} agents")
        out["policies"][name], out["budget"][name] = one_policy(name, tasks, agents, root, seed, say)
    fp = {k: v["false_positive_failures"] for k, v in out["policies"].items()}
    out["fp_reduction_vs_naive"] = 1 - fp["tiered"] / fp["naive"] if fp["naive"] else float("nan")
    return out
