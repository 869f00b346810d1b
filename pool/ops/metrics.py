"""Prometheus metrics of the pool, through `ray.util.metrics`.

The PoolManager owns a `PoolMetrics` and the HealthMonitor actor a `MonitorMetrics`; they call
them where state changes. Gauges are set from the registry's buckets and the ledger (never from a
second counter that can drift); counters count events. Ray exports them from each node's metrics
agent (port `MetricsExportPort` of `ray.nodes()`), with the `ray_` prefix Ray adds to every
application metric, e.g. `ray_selfheal_agents{state="DORMANT",run="selfheal-1a2b3c4d"}`: every
metric carries its pool's `run` (namespace), since several runs may share a cluster.
`pool.ops.grafana` builds a Grafana dashboard of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ray.util.metrics import Counter, Gauge, Histogram

PREFIX = "selfheal_"
SCORE_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]

# name -> (kind, description, tag keys): the one list of what the pool exports
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "agents": ("gauge", "Registered agents by state.", ("state",)),
    "residents": ("gauge", "Resident agents per GPU.", ("gpu",)),
    "vram_used_mib": ("gauge", "VRAM ledger: engine base + resident footprints, MiB.", ("gpu",)),
    "vram_budget_mib": ("gauge", "VRAM budget of one GPU, MiB.", ("gpu",)),
    "vram_limit_mib": ("gauge", "What the ledger may fill: budget x watermark, MiB.", ("gpu",)),
    "queued_tasks": ("gauge", "Tasks queued in the PoolManager.", ()),
    "activations": ("counter", "Agents bound to a warm Host.", ()),
    "parks": ("counter", "Agents checkpointed and unbound from their Host.", ()),
    "migrations": ("counter", "Agents moved to another Host.", ()),
    "hosts_lost": ("counter", "Host processes that died under an agent or with their node.", ()),
    "tasks": ("counter", "Terminal task results by status.", ("status",)),
    "recoveries": ("counter", "Recovery decisions by tier and action.", ("tier", "action")),
    "health_score": ("histogram", "Health score of each assessed answer.", ()),
}


def _make(name: str, run: str) -> Gauge | Counter | Histogram:
    kind, description, tags = METRICS[name]
    full, keys = PREFIX + name, (*tags, "run")
    metric: Gauge | Counter | Histogram
    if kind == "gauge":
        metric = Gauge(full, description=description, tag_keys=keys)
    elif kind == "counter":
        metric = Counter(full, description=description, tag_keys=keys)
    else:
        metric = Histogram(full, description=description, boundaries=SCORE_BUCKETS, tag_keys=keys)
    metric.set_default_tags({"run": run})
    return metric


class PoolMetrics:
    """What the PoolManager exports. Create it inside the actor (metrics are per process)."""

    def __init__(self, run: str) -> None:
        self.m = {name: _make(name, run) for name in METRICS
                  if name not in ("recoveries", "health_score")}

    def pool(self, by_state: Mapping[str, int], queued: int) -> None:
        for state, n in by_state.items():
            self.m["agents"].set(n, tags={"state": state})  # type: ignore[union-attr]
        self.m["queued_tasks"].set(queued)  # type: ignore[union-attr]

    def gpu(self, gpu: int, residents: int, used_mib: float, budget_mib: float,
            limit_mib: float) -> None:
        tags = {"gpu": str(gpu)}
        self.m["residents"].set(residents, tags=tags)  # type: ignore[union-attr]
        self.m["vram_used_mib"].set(used_mib, tags=tags)  # type: ignore[union-attr]
        self.m["vram_budget_mib"].set(budget_mib, tags=tags)  # type: ignore[union-attr]
        self.m["vram_limit_mib"].set(limit_mib, tags=tags)  # type: ignore[union-attr]

    def count(self, name: str, n: int = 1) -> None:
        """One of the untagged counters: activations, parks, migrations, hosts_lost."""
        if n:
            self.m[name].inc(n)  # type: ignore[union-attr]

    def tasks(self, statuses: Iterable[str]) -> None:
        counts: dict[str, int] = {}
        for s in statuses:
            counts[s] = counts.get(s, 0) + 1
        for status, n in counts.items():
            self.m["tasks"].inc(n, tags={"status": status})  # type: ignore[union-attr]


class MonitorMetrics:
    """What the HealthMonitor exports: every score, and each recovery decision by tier."""

    def __init__(self, run: str) -> None:
        self.score = _make("health_score", run)
        self.recoveries = _make("recoveries", run)

    def assessed(self, score: float, tier: int, action: str) -> None:
        self.score.observe(score)  # type: ignore[union-attr]
        if tier:
            self.recoveries.inc(tags={"tier": str(tier), "action": action})  # type: ignore[union-attr]
