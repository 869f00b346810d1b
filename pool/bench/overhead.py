"""Pool overhead: what the pool costs over calling the engine directly.

Scripted engine at zero cost, no faults: agent-steps per second through the whole pool
(PoolManager -> Host -> HealthMonitor, checkpoints committed after every batch) against bare Ray
actor calls doing the same number of steps (one call per step, spread over as many actors as the
pool has Hosts). Real model: the pool answering the shipped tasks against llama.cpp's own server
engine (what a user runs instead: llama-server, here in-process through xllamacpp) with as many
parallel slots as the pool has Hosts, called from as many threads, continuous batching and prompt
caching on (its 8 GiB host-RAM prompt cache too), the same GGUF and threads. One attempt per
task on both sides, no task asked twice. Both sides alternate, repetition by repetition, after
an untimed warm-up each; one pool serves every repetition (fresh task ids each time), so Host
start-up, model loading and first activations are outside the timings on both sides.

A third side splits the gap: llama-server driven as a client of stateful agents must drive it
(`_serve_in_order`), each agent's tasks one after another on one slot (its next request needs its
last answer), as many agents at once as slots. It runs on its own engine, so that no request is
answered from the other side's prompt cache. The pool against it is the pool's own overhead; the
two peers against each other are what running an agent's tasks in order costs the round.

How full the engine's batches are, on both sides, from llama-server's own counters
(`decode_figures`): decode steps per task, tokens per step and milliseconds of the round per
step. The engine is the same, so a step costs about the same whatever it holds: a pool that feeds
its engine fewer sequences at a time needs more steps for the same tokens, and one whose engine
shares the cores takes longer per step. The throughput ratio is the product of the two ratios.

Where the CPU goes during the pool's rounds (`cpu_split`): the seconds of CPU each process of the
machine used, the engine actor's against everything else (the manager, Hosts, monitor, Ray's own
daemons, the driver). llama-server's rounds run in this process and nothing else is busy, so its
engine has the machine to itself; on a machine as small as the pool's test one, the pool's other
processes' share is what its engine loses.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import ray

from agents.config import EngineConfig
from agents.engines.base import GenRequest
from agents.engines.factory import make_engine
from agents.engines.shared import engine_actors
from agents.models import AgentSpec, Task
from pool.bench.common import (
    NO_FAULTS,
    SERVER_CACHE_MIB,
    Say,
    on_free_slots,
    ratio,
    settings,
    start_pool,
    stats,
)
from pool.bench.workload import shipped
from pool.driver.synthetic import synthetic_tasks


@ray.remote(num_cpus=0)
class BareEngine:
    """A Ray actor around an engine and nothing else: the baseline."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.engine = make_engine(cfg)

    def step(self, req: GenRequest) -> int:
        return self.engine.generate(req).completion_tokens


def _request(task: Task, spec: AgentSpec) -> GenRequest:
    params = spec.generation
    if task.max_tokens:
        params = params.model_copy(update={"max_tokens": task.max_tokens})
    return GenRequest(agent_id=task.agent_id, task_id=task.task_id,
                      system_prompt=spec.system_prompt, prompt=task.prompt, params=params,
                      kind=task.kind, json_schema=task.json_schema, labels=task.labels)


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


def real_model(limit: int, reps: int, root: Any, say: Say, slots: int | None = None,
               one_priority: bool = False) -> dict[str, Any]:
    """Pool vs llama-server with the same slots on the same tasks: one attempt each (recovery
    none) and no memory in the prompts, so that both sides do the same model work. With
    `one_priority`, the pool's agents are all at one priority, as llama-server treats them."""
    from agents.engines.llama_server import LlamaServerCore

    pool_cfg: dict[str, Any] = {"slots_per_gpu": slots} if slots else {}
    cfg = settings("llama_cpp", recovery={"mode": "none"}, engine={"memory_tokens": 0},
                   pool=pool_cfg, health={"votes": 1})  # one generation per task, as the peer
    every, specs = shipped(None)
    specs = at_one_priority(specs) if one_priority else specs
    warm, rounds = _disjoint(every, limit, reps)
    by_id = {s.agent_id: s for s in specs}
    k = cfg.pool.slots_per_gpu
    say(f"  real model: starting the pool ({k} Hosts on one shared engine) and llama-server ({k} slots)")
    pool = start_pool(cfg, root / "checkpoints")
    # llama-server as it comes: its host-RAM prompt cache at its default size (the pool's engine
    # has one too, `engine.prompt_cache_mib`, smaller: each agent's own KV is in its checkpoint)
    peer_cfg = cfg.engine.model_copy(update={"prompt_cache_mib": SERVER_CACHE_MIB})
    server = LlamaServerCore(peer_cfg, slots=k)
    in_order = LlamaServerCore(peer_cfg, slots=k)
    rows: defaultdict[str, list[float]] = defaultdict(list)  # figure -> one value a round
    try:
        pool.register(specs)
        say(f"  real model: {len(warm)} untimed tasks on both sides (engine load, first activations)")
        pool.run(warm)
        _serve(server, k, [_request(t, by_id[t.agent_id]) for t in warm])
        _serve_in_order(in_order, k, [_request(t, by_id[t.agent_id]) for t in warm])
        (engine,) = engine_actors(cfg.pool.namespace)
        for rep, batch in enumerate(rounds):
            before, counted = cpu_seconds(), ray.get(engine.metrics.remote())
            wall = pool.run(batch)
            split = cpu_split(before, cpu_seconds())
            _add(rows, "pool", decode_figures(counted, ray.get(engine.metrics.remote()), len(batch), wall))
            rows["pool_engine_cpu_share"].append(split["engine_share"])
            done = [pool.results[t.task_id] for t in batch if t.task_id in pool.results]
            lat = stats([r.elapsed_s for r in done])
            rows["pool_tasks_per_s"].append(len(done) / wall)
            rows["pool_latency_p50_s"].append(lat["p50"])
            rows["pool_latency_p95_s"].append(lat["p95"])
            counted = server.metrics()
            served, s_lat = _serve(server, k, [_request(t, by_id[t.agent_id]) for t in batch])
            _add(rows, "server", decode_figures(counted, server.metrics(), len(batch), served))
            rows["server_tasks_per_s"].append(len(batch) / served)
            rows["server_latency_p50_s"].append(s_lat["p50"])
            rows["server_latency_p95_s"].append(s_lat["p95"])
            chained = _serve_in_order(in_order, k, [_request(t, by_id[t.agent_id]) for t in batch])
            rows["server_in_order_tasks_per_s"].append(len(batch) / chained)
            say(f"  real model rep {rep + 1} / {reps}: pool {rows['pool_tasks_per_s'][-1]:.2f} "
                f"tasks/s, llama-server {rows['server_tasks_per_s'][-1]:.2f} tasks/s; in the pool's "
                f"round its engine had {split['engine_share']:.0%} of the CPU used ({split['line']})")
    finally:
        pool.stop()
        server.close()
        in_order.close()
    out: dict[str, Any] = {"tasks": len(rounds[0]), "reps": reps, "slots": k, "one_priority": one_priority,
                           **{key: stats(v) for key, v in rows.items()}}
    out["ratio_tasks_p50"] = ratio(out["pool_tasks_per_s"]["p50"], out["server_tasks_per_s"]["p50"])
    out["ratio_tasks_in_order_p50"] = ratio(out["pool_tasks_per_s"]["p50"],
                                            out["server_in_order_tasks_per_s"]["p50"])
    out["ratio_latency_p50"] = ratio(out["pool_latency_p50_s"]["p50"], out["server_latency_p50_s"]["p50"])
    out["ratio_latency_p95"] = ratio(out["pool_latency_p95_s"]["p50"], out["server_latency_p95_s"]["p50"])
    return out


def at_one_priority(specs: list[AgentSpec]) -> list[AgentSpec]:
    """The same agents at the default priority: the lowest-priority agents no longer wait for the
    others and then run their tasks one after another at the end of a round."""
    return [s.model_copy(update={"priority": AgentSpec.model_fields["priority"].default}) for s in specs]


def decode_figures(before: Mapping[str, float], after: Mapping[str, float], tasks: int,
                   wall_s: float) -> dict[str, float]:
    """Decode steps per task, tokens per decode step and milliseconds of the round per step,
    between two readings of llama-server's counters (`LlamaServerCore.metrics`) taken `wall_s`
    apart, and the tokens of a step per task: prompt tokens evaluated (not those reused from a
    cache) and tokens generated. Throughput ratios are the product of the steps ratio and the
    time-per-step ratio."""
    def used(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    steps = used("n_decode_total")
    prompt, generated = used("prompt_tokens_total"), used("tokens_predicted_total")
    return {"decodes_per_task": steps / tasks if tasks else 0.0,
            "tokens_per_decode": (prompt + generated) / steps if steps else 0.0,
            "ms_per_decode": wall_s * 1000 / steps if steps else 0.0,
            "prompt_tokens_per_task": prompt / tasks if tasks else 0.0,
            "generated_tokens_per_task": generated / tasks if tasks else 0.0}


def _add(rows: dict[str, list[float]], side: str, figures: Mapping[str, float]) -> None:
    for name, value in figures.items():
        rows[f"{side}_{name}"].append(value)


def _disjoint(tasks: list[Task], n: int, reps: int) -> tuple[list[Task], list[list[Task]]]:
    """An untimed warm-up (as many tasks as a round, at most 32) and `reps` rounds of `n` tasks,
    taken in order from the shipped tasks after it: a round never repeats an earlier round's task
    (an identical request is a prompt-cache hit no real workload gives), unless there are too few."""
    warm = tasks[: min(n, 32)]
    rest = tasks[len(warm) :] or tasks
    rounds = [[rest[(r * n + i) % len(rest)] for i in range(n)] for r in range(reps)]
    return _renamed(warm, -1), [_renamed(b, r) for r, b in enumerate(rounds)]


def _serve(server: Any, slots: int, reqs: list[GenRequest]) -> tuple[float, dict[str, float]]:
    """llama-server as its docs say to drive it: `slots` clients at once, each on its own slot.
    Returns the wall time and the request latencies' stats."""
    wall, answers = on_free_slots(slots, [[req] for req in reqs], server.generate)
    return wall, stats(lat for lat, _ in answers)


def _serve_in_order(server: Any, slots: int, reqs: list[GenRequest]) -> float:
    """llama-server as a client of stateful agents drives it: each agent's requests one after
    another on one slot, in the order given, `slots` agents at once, the next agent (in order of
    its first request) on the first slot that frees. Returns the wall time."""
    chains: dict[str, list[GenRequest]] = {}
    for req in reqs:
        chains.setdefault(req.agent_id, []).append(req)
    return on_free_slots(slots, list(chains.values()), server.generate)[0]


ENGINE_PROCESS = "ray::LlamaEngineActor"  # the shared llama.cpp engine's actor, as `ps` names it


def cpu_seconds() -> dict[int, tuple[float, str]]:
    """pid -> (CPU seconds so far, its name as `ps` shows it) for every process of the machine."""
    import psutil

    out = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            t = p.cpu_times()
            out[p.pid] = (t.user + t.system, " ".join(p.info["cmdline"] or [p.info["name"] or ""]))
        except (psutil.Error, OSError):  # gone, or not ours to read
            continue
    return out


def cpu_split(before: Mapping[int, tuple[float, str]],
              after: Mapping[int, tuple[float, str]]) -> dict[str, Any]:
    """The CPU seconds used between two `cpu_seconds` readings: the engine's, the rest's (the
    three biggest named), and the engine's share of all of it."""
    used: dict[str, float] = {}
    for pid, (t, name) in after.items():
        key = name.split()[0] if name else str(pid)
        used[key] = used.get(key, 0.0) + max(0.0, t - before.get(pid, (0.0, ""))[0])
    mine = sum(v for k, v in used.items() if k.startswith(ENGINE_PROCESS))
    total = sum(used.values())
    rest = sorted(((v, k) for k, v in used.items() if not k.startswith(ENGINE_PROCESS)), reverse=True)
    line = f"engine {mine:.1f} s, the rest {total - mine:.1f} s: " + ", ".join(
        f"{k.rsplit('/', 1)[-1]} {v:.1f}" for v, k in rest[:3])
    return {"engine_s": mine, "total_s": total, "engine_share": mine / total if total else 0.0,
            "line": line}
