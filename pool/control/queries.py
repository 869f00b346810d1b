"""What the operator commands read from the PoolManager: `status`, `failed`, `inspect`, the
benchmarks' `memory`, and the residency events and gauges. `Views`, a collaborator of
`pool.control.manager.PoolManager`, reads the scheduler's facts; nothing here changes the pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agents.state import AgentState
from pool.control.scheduler import Scheduler
from pool.ops.attach import AgentTrail
from pool.ops.metrics import PoolMetrics
from pool.store.checkpoint import CheckpointStore

GAUGE_INTERVAL_S = 2.0


class Views:
    def __init__(self, sched: Scheduler, store: CheckpointStore, monitor: Any, trail: AgentTrail,
                 metrics: PoolMetrics) -> None:
        self.sched, self.store, self.monitor, self.trail, self.metrics = (
            sched, store, monitor, trail, metrics)

    def note_residency(self) -> None:
        ledger = self.sched.ledger
        for gpu in range(ledger.num_gpus):
            residents = self.sched.residents_on(gpu)
            self.sched.events.emit("pool.residency", gpu=gpu, residents=len(residents),
                                   used_mib=ledger.used(residents, gpu), limit_mib=ledger.limit_mib,
                                   slots=ledger.slots_per_gpu)
        self.gauges()

    def gauges(self) -> None:
        ledger = self.sched.ledger
        for gpu in range(ledger.num_gpus):
            residents = self.sched.residents_on(gpu)
            self.metrics.gpu(gpu, len(residents), ledger.used(residents, gpu), ledger.budget_mib,
                             ledger.limit_mib)
        self.metrics.pool(self.sched.registry.counts(), self.sched.book.queued())

    async def gauge_loop(self) -> None:
        """Refresh the gauges while the pool is idle too: Prometheus scrapes on its own clock."""
        while True:
            await asyncio.sleep(GAUGE_INTERVAL_S)
            self.gauges()

    async def status(self) -> dict[str, Any]:
        s, ledger = self.sched, self.sched.ledger
        hosts = [{"host": h.host_id, "gpu": h.gpu, "agent": h.agent, "busy": h.busy,
                  "lost": h.lost, "dead": h.dead, "kv_tokens": h.kv_tokens if h.agent else 0,
                  "kv_mib": ledger.footprint(h.kv_tokens) if h.agent else 0}
                 for h in s.hosts]

        def gpu_line(g: int) -> dict[str, Any]:
            used = ledger.used(s.residents_on(g), g)
            return {"gpu": g, "used_mib": used, "extra_mib": ledger.extra(g),
                    "base_mib": ledger.base_mib, "limit_mib": ledger.limit_mib,
                    "budget_mib": ledger.budget_mib, "free_mib": ledger.limit_mib - used,
                    "slots": ledger.slots_per_gpu, "kv_bytes_per_token": ledger.kv_bytes_per_token,
                    "paused": s.paused.get(g)}

        return {"agents": len(s.registry), "by_state": s.registry.counts(), "hosts": hosts,
                "queued": s.book.queued(), "waiting_agents": s.registry.waiting(),
                "ledger": [gpu_line(g) for g in range(ledger.num_gpus)]}

    async def failed(self) -> dict[str, Any]:
        """FAILED agents with their reasons, and the dead-lettered tasks (`selfheal failed`)."""
        got = await self.monitor.failed.remote()
        agents = [{"agent_id": a, "reason": got["agents"].get(a, "")}
                  for a in self.sched.registry.ids(AgentState.FAILED)]
        return {"agents": agents, "dead_letters": got["dead_letters"]}

    async def inspect(self, agent_id: str) -> dict[str, Any] | None:
        """One agent: registry entry, checkpoint versions, monitor reports, recent events."""
        registry = self.sched.registry
        if agent_id not in registry:
            return None
        e = registry.get(agent_id)
        versions = await asyncio.to_thread(self.store.versions, agent_id)
        return {"agent_id": agent_id, "state": e.state.value, "priority": e.priority,
                "epoch": e.epoch, "host": e.host, "hot": e.hot is not None,
                "queued": len(e.queue), "host_deaths": e.crashes,
                "versions": [{"version": v.version, "epoch": v.epoch, "size": v.size,
                              "sha256": v.sha256} for v in versions],
                **await self.monitor.inspect.remote(agent_id),
                "history": self.trail.of(agent_id)}

    def memory(self, trace: bool | None = None) -> dict[str, int]:
        """For benchmarks: the process RSS and the Python heap traced since `trace=True`."""
        import gc
        import resource
        import tracemalloc

        gc.collect()
        if trace:
            tracemalloc.start()
        traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
        if trace is False:
            tracemalloc.stop()
        with open("/proc/self/statm") as fh:
            rss = int(fh.read().split()[1]) * resource.getpagesize()
        return {"rss_bytes": rss, "traced_bytes": traced, "agents": len(self.sched.registry)}
