"""Activation latency: dormant -> resident and ready to serve.

(a) the pool's way: bind a checkpoint to a warm Host (`HostActor.bind`), from hot-tier bytes in
the object store or from the durable tier on disk; (b) the naive way most Ray users would write:
a new Ray actor per agent whose constructor loads the agent's checkpoint, timed to its first
answered call. Both sides alternate in rounds (a batch of binds, then one naive activation), so
noise from other work on the machine hits both alike.

With the llama.cpp engine the question is what a KV snapshot in the checkpoint saves: the agent
is bound and answers its first task from its hot-tier copy three ways: as the pool parks it (a
reference to the engine's kept copy of its KV), with the whole snapshot (what every bind carries
when the engine keeps no copy: `engine.kv_keep_mib` 0, or the copy was evicted) and without KV.
The engine's context is overwritten by another agent before each measurement, so nothing is
served from a prefix that happens to be left over.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray

from agents import codec
from agents.config import Settings
from agents.engines.factory import make_engine
from agents.models import AgentRecord, AgentSpec, GenerationParams, Task, TaskKind, Turn
from pool.bench.common import Say, ratio, settings, stats
from pool.runtime.actors import MONITOR_NAME, HostActor, MonitorActor
from pool.store.checkpoint import CheckpointStore


@ray.remote(num_cpus=0)
class NaiveAgent:
    """One actor per agent, state loaded in the constructor: the baseline."""

    def __init__(self, agent_id: str, store_root: str, cfg: Settings) -> None:
        self.record = CheckpointStore(store_root).read(agent_id)[0]
        self.engine = make_engine(cfg.engine, pool=cfg.pool)

    def ready(self) -> str:
        return self.record.spec.agent_id


def _record(agent_id: str, turns: int, persona: str = "", gen: GenerationParams | None = None
            ) -> AgentRecord:
    """An agent with a persona and `turns` remembered exchanges (a realistic checkpoint)."""
    memory = tuple(
        Turn(role=role, content=f"{role} turn {i}: the order of {i * 3} boxes ships to city {i}.")
        for i in range(turns) for role in ("user", "assistant")
    )
    spec = AgentSpec(agent_id=agent_id, system_prompt=persona or
                     f"You are {agent_id}, a concise assistant for a shipping company.",
                     generation=gen or GenerationParams())
    return AgentRecord(spec=spec, memory=memory, tasks_done=turns)


class _Warm:
    """A monitor and one warm Host in the settings' namespace."""

    def __init__(self, cfg: Settings, store_root: Path) -> None:
        self.cfg = cfg
        ns = cfg.pool.namespace
        self.monitor = MonitorActor.options(  # type: ignore[attr-defined]
            name=MONITOR_NAME, namespace=ns).remote(cfg)
        ray.get(self.monitor.drain_events.remote())
        self.host = HostActor.options(  # type: ignore[attr-defined]
            name=f"bench-host-{ns}", namespace=ns, num_gpus=1 / cfg.pool.slots_per_gpu,
        ).remote("bench-host", cfg, str(store_root), 0, 1)
        ray.get(self.host.info.remote())
        self.epoch = 0

    def bind(self, agent_id: str, blob: Any) -> tuple[float, dict[str, Any]]:
        """Seconds to bind (measured by the caller, as the PoolManager sees it) and the info."""
        self.epoch += 1
        started = time.perf_counter()
        info = ray.get(self.host.bind.remote(agent_id, blob, self.epoch))
        return time.perf_counter() - started, info

    def release(self) -> None:
        ray.get(self.host.release.remote())

    def close(self) -> None:
        from agents.engines.shared import shutdown_engines

        for actor in (self.host, self.monitor):
            ray.kill(actor, no_restart=True)
        shutdown_engines(self.cfg.pool.namespace)


def bind_vs_naive(store_root: Path, rounds: int, per_round: int, say: Say) -> dict[str, Any]:
    """(a) hot and disk binds to a warm Host against (b) a new actor per agent (scripted engine)."""
    cfg = settings("scripted")
    store = CheckpointStore(store_root)
    records = [_record(f"act-{i:04d}", turns=8) for i in range(64)]
    for r in records:
        store.write(r, 0)
    hot = {r.spec.agent_id: ray.put(codec.encode(r)) for r in records}
    warm = _Warm(cfg, store_root)
    times: dict[str, list[float]] = {"hot": [], "disk": [], "naive": []}
    k = 0
    for rnd in range(rounds):
        for _ in range(per_round):
            for tier in ("hot", "disk"):
                agent_id = records[k % len(records)].spec.agent_id
                k += 1
                elapsed, _ = warm.bind(agent_id, hot[agent_id] if tier == "hot" else None)
                times[tier].append(elapsed)
                warm.release()
        agent_id = records[rnd % len(records)].spec.agent_id
        started = time.perf_counter()
        actor = NaiveAgent.options(  # type: ignore[attr-defined]
            num_gpus=1 / cfg.pool.slots_per_gpu).remote(
            agent_id, str(store_root), cfg)
        ray.get(actor.ready.remote())
        times["naive"].append(time.perf_counter() - started)
        ray.kill(actor, no_restart=True)
        if (rnd + 1) % 5 == 0:
            say(f"  activation round {rnd + 1} / {rounds}")
    warm.close()
    ms = {tier: stats(1000 * t for t in v) for tier, v in times.items()}
    return {
        "unit": "ms", "checkpoint_bytes": len(codec.encode(records[0])), **ms,
        "speedup_hot_p50": ratio(ms["naive"]["p50"], ms["hot"]["p50"]),
        "speedup_disk_p50": ratio(ms["naive"]["p50"], ms["disk"]["p50"]),
        "samples_ms": {tier: [round(1000 * t, 3) for t in v] for tier, v in times.items()},
    }


def _task(task_id: str, agent_id: str, prompt: str) -> Task:
    return Task(task_id=task_id, agent_id=agent_id, prompt=prompt, kind=TaskKind.FREE,
                max_tokens=8)


def kv_restore(store_root: Path, reps: int, turns: int, say: Say) -> dict[str, Any]:
    """llama.cpp: bind + first answer from a checkpoint with and without its KV snapshot."""
    cfg = settings("llama_cpp", engine={"kv_snapshot": True}, recovery={"mode": "none"})
    gen = GenerationParams(temperature=0.0, max_tokens=8)
    store = CheckpointStore(store_root)
    agent = _record("kv-agent", turns=turns, gen=gen)
    flush = _record("kv-flush", turns=0, persona="You answer in French.", gen=gen)
    for r in (agent, flush):
        store.write(r, 0)
    warm = _Warm(cfg, store_root)
    warm.bind("kv-agent", None)  # one task fills the context and snapshots it into the checkpoint
    ray.get(warm.host.run.remote([(_task("kv-warm", "kv-agent", "Which city gets box 3?"), None)], 1.0))
    hot = ray.get(warm.host.park.remote())  # its KV: a reference to the engine's copy
    whole = store.read("kv-agent")[0]  # the checkpoint has the whole snapshot
    blobs = {"with_kv": hot, "with_kv_whole": codec.encode(whole),
             "without_kv": codec.encode(whole.model_copy(update={"kv_state": None}))}
    times: dict[str, dict[str, list[float]]] = {v: {"bind": [], "first_answer": []} for v in blobs}
    restored: dict[str, list[bool]] = {v: [] for v in blobs}
    fallbacks = 0  # binds whose reference the engine no longer knew (then the checkpoint's KV)
    for i in range(reps):
        for variant, blob in blobs.items():
            warm.bind("kv-flush", None)  # another agent takes the context
            flush_task = _task(f"flush-{variant}-{i}", "kv-flush", "Bonjour?")
            ray.get(warm.host.run.remote([(flush_task, None)], 1.0))
            ray.get(warm.host.park.remote())  # commits it DORMANT, ready for the next bind
            bind_s, info = warm.bind("kv-agent", blob)
            outcomes, _, _ = ray.get(warm.host.run.remote(
                [(_task(f"kv-{variant}-{i}", "kv-agent", "Which city gets box 6?"), None)], 1.0))
            result = outcomes[0].result
            times[variant]["bind"].append(bind_s)
            times[variant]["first_answer"].append(bind_s + (result.elapsed_s if result else 0.0))
            restored[variant].append(bool(info["kv_restored"]))
            fallbacks += bool(info["kv_fallback"])
            warm.release()
        say(f"  kv restore rep {i + 1} / {reps}")
    warm.close()
    out: dict[str, Any] = {"unit": "ms", "memory_turns": 2 * turns,
                           "kv_bytes": len(whole.kv_state or b""),  # 0: over kv_max_bytes
                           "kv_max_bytes": cfg.engine.kv_max_bytes,
                           "hot_bytes": {v: len(b) for v, b in blobs.items()},
                           "kv_fallbacks": fallbacks}
    for variant, parts in times.items():
        out[variant] = {part: stats(1000 * t for t in v) for part, v in parts.items()}
        out[variant]["kv_restored"] = sum(restored[variant])
    out["first_answer_saving_p50_ms"] = (out["without_kv"]["first_answer"]["p50"]
                                         - out["with_kv"]["first_answer"]["p50"])
    return out
