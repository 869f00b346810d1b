"""What the operator commands read from the PoolManager: `status`, `failed`, `inspect`, the
benchmarks' `memory`, and the residency events and gauges. A mixin of `pool.control.manager.PoolManager`
(its state is the manager's); nothing here changes the pool.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from agents.events import EventSink
from agents.state import AgentState
from pool.control.budget import Resident, VramLedger
from pool.control.registry import Registry
from pool.control.slots import Slot
from pool.ops.attach import AgentTrail
from pool.ops.metrics import PoolMetrics
from pool.store.checkpoint import CheckpointStore

GAUGE_INTERVAL_S = 2.0


class Queries:
    slots: list[Slot]
    ledger: VramLedger
    registry: Registry
    store: CheckpointStore
    queues: dict[str, deque[Any]]
    crashes: dict[str, int]
    paused: dict[int, str]
    trail: AgentTrail
    monitor: Any
    events: EventSink
    metrics: PoolMetrics

    def _residents_on(self, gpu: int) -> list[Resident]:
        raise NotImplementedError

    def _queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def _note_residency(self) -> None:
        for gpu in range(self.ledger.num_gpus):
            residents = self._residents_on(gpu)
            self.events.emit("pool.residency", gpu=gpu, residents=len(residents),
                             used_mib=self.ledger.used(residents, gpu),
                             limit_mib=self.ledger.limit_mib, slots=self.ledger.slots_per_gpu)
        self._gauges()

    def _gauges(self) -> None:
        for gpu in range(self.ledger.num_gpus):
            residents = self._residents_on(gpu)
            self.metrics.gpu(gpu, len(residents), self.ledger.used(residents, gpu),
                             self.ledger.budget_mib, self.ledger.limit_mib)
        self.metrics.pool(self.registry.counts(), self._queued())

    async def _gauge_loop(self) -> None:
        """Refresh the gauges while the pool is idle too: Prometheus scrapes on its own clock."""
        while True:
            await asyncio.sleep(GAUGE_INTERVAL_S)
            self._gauges()

    async def status(self) -> dict[str, Any]:
        hosts = [{"host": s.host_id, "gpu": s.gpu, "agent": s.agent, "busy": s.busy,
                  "lost": s.lost, "dead": s.dead, "kv_tokens": s.kv_tokens if s.agent else 0,
                  "kv_mib": self.ledger.footprint(s.kv_tokens) if s.agent else 0}
                 for s in self.slots]
        return {
            "agents": len(self.registry), "by_state": self.registry.counts(),
            "hosts": hosts, "queued": self._queued(), "waiting_agents": self.registry.waiting(),
            "ledger": [{"gpu": g, "used_mib": self.ledger.used(self._residents_on(g), g),
                        "extra_mib": self.ledger.extra(g), "base_mib": self.ledger.base_mib,
                        "limit_mib": self.ledger.limit_mib, "budget_mib": self.ledger.budget_mib,
                        "free_mib": self.ledger.limit_mib - self.ledger.used(self._residents_on(g), g),
                        "slots": self.ledger.slots_per_gpu,
                        "kv_bytes_per_token": self.ledger.kv_bytes_per_token,
                        "paused": self.paused.get(g)}
                       for g in range(self.ledger.num_gpus)],
        }

    async def failed(self) -> dict[str, Any]:
        """FAILED agents with their reasons, and the dead-lettered tasks (`selfheal failed`)."""
        got = await self.monitor.failed.remote()
        agents = [{"agent_id": a, "reason": got["agents"].get(a, "")}
                  for a in self.registry.ids(AgentState.FAILED)]
        return {"agents": agents, "dead_letters": got["dead_letters"]}

    async def inspect(self, agent_id: str) -> dict[str, Any] | None:
        """One agent: registry entry, checkpoint versions, monitor reports, recent events."""
        if agent_id not in self.registry:
            return None
        e = self.registry.get(agent_id)
        versions = await asyncio.to_thread(self.store.versions, agent_id)
        return {"agent_id": agent_id, "state": e.state.value, "priority": e.priority,
                "epoch": e.epoch, "host": e.host, "hot": e.hot is not None,
                "queued": len(self.queues.get(agent_id, ())),
                "host_deaths": self.crashes.get(agent_id, 0),
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
        return {"rss_bytes": rss, "traced_bytes": traced, "agents": len(self.registry)}

