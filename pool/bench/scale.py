"""Scale: register N agents (a row each in the store's agent table), then activate a random 1%.

Reported per size: registration rate, the PoolManager's memory per dormant agent, disk bytes per
agent, and the activation latency of the sampled agents (the `pool.activated` events: first binds,
from each agent's registry row). The small size runs first as the reference, so the ratio shows how
the cost of an activation grows with the number of agents. `selfheal bench --only scale --agents
1000000` is the one-million-agent run (about 3 minutes on 2 cores).

Memory per agent is measured two ways inside the PoolManager actor: the RSS delta over the timed
registration (includes allocator slack and dict growth: an upper bound), and the Python heap that
tracemalloc sees retained by a further 1% of agents registered at full size (the marginal cost).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

from agents.models import AgentSpec, Task
from pool.bench.common import NO_FAULTS, Say, disk_usage, ratio, settings, start_pool, stats

CHUNK = 50_000  # agents per `register` call: one table file each


def _specs(n: int, prefix: str = "agent") -> list[AgentSpec]:
    return [AgentSpec(agent_id=f"{prefix}-{i:06d}", priority=i % 10) for i in range(n)]


def one_size(n: int, root: Path, seed: int, say: Say) -> dict[str, Any]:
    cfg = settings("scripted", engine={"faults": NO_FAULTS})
    pool = start_pool(cfg, root / "checkpoints")
    try:
        before = pool.memory()
        register_s = pool.register(_specs(n), chunk=CHUNK, say=say)
        after = pool.memory()
        extra = max(1, n // 100)
        pool.memory(trace=True)
        pool.register(_specs(extra, prefix="extra"))
        traced = pool.memory(trace=False)
        say(f"  {n:,} agents registered in {register_s:.1f} s; activating a sample")
        allocated, apparent, files = disk_usage(root / "checkpoints")
        k = max(n // 100, min(n, 100))
        sample = random.Random(seed).sample(range(n), k)
        tasks = [Task(task_id=f"s{i}", agent_id=f"agent-{a:06d}", prompt="What is 2 plus 2?",
                      kind="answer", expected="4") for i, a in enumerate(sample)]
        wall = pool.run(tasks, say=say)
        latencies = [1000 * e["latency_s"] for e in pool.events if e["event"] == "pool.activated"]
        agents = n + extra
        return {
            "agents": n,
            "register_s": register_s,
            "register_per_s": n / register_s,
            "manager_rss_bytes_per_agent": (after["rss_bytes"] - before["rss_bytes"]) / n,
            "manager_traced_bytes_per_agent": traced["traced_bytes"] / extra,
            "disk_bytes_per_agent": allocated / agents,
            "disk_apparent_bytes_per_agent": apparent / agents,
            "files_per_agent": files / agents,
            "activated": k,
            "activation_ms": stats(latencies),
            "activation_wall_s": wall,
            "tasks_done": sum(t.task_id in pool.results for t in tasks),
        }
    finally:
        pool.stop()
        shutil.rmtree(root, ignore_errors=True)


def scale(n: int, small: int, root: Path, seed: int, say: Say) -> dict[str, Any]:
    say(f"scale: {small:,} agents (reference)")
    ref = one_size(small, root / f"n{small}", seed, say)
    say(f"scale: {n:,} agents")
    big = one_size(n, root / f"n{n}", seed, say)
    return {"small": ref, "large": big,
            "activation_p50_ratio": ratio(big["activation_ms"]["p50"], ref["activation_ms"]["p50"]),
            "activation_p99_ratio": ratio(big["activation_ms"]["p99"], ref["activation_ms"]["p99"])}
