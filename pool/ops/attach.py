"""What the operator commands (`selfheal status|failed|retry|inspect`) need, apart from click.

`attach` joins a running cluster (never starts one) and finds the pool's named, detached actors;
the rest turns the PoolManager's and the HealthMonitor's answers into rich tables. `AgentTrail`
is the bounded per-agent event history the PoolManager keeps for `inspect`.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Iterable
from typing import Any

import ray
from rich.console import Group
from rich.table import Table

from agents.errors import UsageError
from pool.driver.runs import live_runs, run_namespace
from pool.runtime.actors import MANAGER_NAME, MONITOR_NAME

TRAIL_EVENTS = frozenset({
    "agent.state_changed", "agent.activated", "agent.memory_compressed", "agent.failed",
    "agent.released", "pool.activated", "pool.parked", "pool.migrating", "pool.migrated", "pool.host_lost",
    "pool.agent_failed", "recovery.decided", "recovery.dead_lettered",
})
_TRAIL_KEEP = 50_000  # events kept in all; an agent's trail is what is left of them
_FIELDS = ("event", "ts", "old", "new", "host", "src", "action", "tier", "reason", "task_id", "why",
           "src_host", "dst_host", "unavailable_s")


class AgentTrail:
    """The latest agent events (state changes, activations, recoveries), newest last."""

    def __init__(self, keep: int = _TRAIL_KEEP) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=keep)

    def feed(self, events: Iterable[dict[str, Any]]) -> None:
        for e in events:
            if e.get("event") in TRAIL_EVENTS and e.get("agent_id"):
                self._events.append({k: e[k] for k in ("agent_id", *_FIELDS) if k in e})

    def of(self, agent_id: str, last: int = 20) -> list[dict[str, Any]]:
        mine = [e for e in self._events if e["agent_id"] == agent_id]
        return mine[-last:]


# -- joining the cluster --------------------------------------------------------------------
def connect(address: str | None) -> None:
    """Join a running cluster (never start one): `address`, 'auto' or none for the one
    `ray start` started on this machine."""
    if ray.is_initialized():
        return
    target = _reachable(_current_cluster() if address in (None, "", "auto") else str(address))
    try:
        ray.init(address=target, log_to_driver=False, logging_level=logging.ERROR)
    except ConnectionError:
        raise UsageError(f"no Ray cluster is running at {target}") from None


def attach(address: str | None, prefix: str, run: str | None = None) -> tuple[Any, Any]:
    """Handles of the PoolManager and HealthMonitor of a run's pool (`run`, or the only live
    run); UsageError otherwise."""
    connect(address)
    namespace = pick_run(prefix, run)
    try:
        manager = ray.get_actor(MANAGER_NAME, namespace=namespace)
    except ValueError:
        raise UsageError(f"no selfheal pool of run {run} is running on this Ray cluster; "
                         f"`selfheal runs` lists the live ones") from None
    try:
        monitor = ray.get_actor(MONITOR_NAME, namespace=namespace)
    except ValueError:
        monitor = None
    return manager, monitor


def pick_run(prefix: str, run: str | None) -> str:
    """The namespace of run `run`, else of the only live run."""
    if run:
        return run_namespace(prefix, run)
    runs = live_runs(prefix)
    if not runs:
        raise UsageError(f"no selfheal pool is running on this Ray cluster (namespace prefix "
                         f"{prefix!r}); start one with `selfheal run`")
    if len(runs) > 1:
        raise UsageError(f"{len(runs)} runs are live on this cluster "
                         f"({', '.join(r['run'] for r in runs)}): pick one with --run")
    return str(runs[0]["namespace"])


def _current_cluster() -> str:
    """The cluster `ray start` last started on this machine (never a private `ray.init` one)."""
    from ray._private.utils import read_ray_address

    found = read_ray_address()
    if not found:
        raise UsageError("no Ray cluster is running on this machine; start one with "
                         "`ray start --head` (or give --address)")
    return str(found)


def _reachable(address: str, timeout_s: float = 3.0) -> str:
    """Fail in seconds, not minutes, when nothing listens at a host:port address."""
    if "://" in address:
        return address
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError):
        raise UsageError(f"no Ray cluster is running at {address}") from None
    return address


def scores(monitor: Any, agent_ids: list[str]) -> dict[str, float]:
    """The last health score of each agent the monitor has assessed."""
    if monitor is None or not agent_ids:
        return {}
    infos = ray.get([monitor.inspect.remote(a) for a in agent_ids], timeout=10)
    return {a: i["reports"][-1]["score"] for a, i in zip(agent_ids, infos, strict=True)
            if i["reports"]}


def snapshot(manager: Any, monitor: Any) -> dict[str, Any]:
    """`PoolManager.status()` plus each resident's last health score (for --json and tables)."""
    status: dict[str, Any] = ray.get(manager.status.remote(), timeout=10)
    found = scores(monitor, [h["agent"] for h in status["hosts"] if h["agent"]])
    for h in status["hosts"]:
        h["score"] = found.get(h["agent"]) if h["agent"] else None
    return status


# -- tables ----------------------------------------------------------------------------------
def status_view(s: dict[str, Any]) -> Group:
    states = Table(title=f"agents ({s['agents']})")
    states.add_column("state")
    states.add_column("agents", justify="right")
    for state, n in s["by_state"].items():
        states.add_row(state, str(n))
    gpus = Table(title="VRAM ledger")
    for col in ("gpu", "residents", "used / limit MiB", "engine base", "agents' KV",
                "measured extra", "free MiB", "budget MiB", "paused"):
        gpus.add_column(col, justify="right")
    for g in s["ledger"]:
        on_gpu = [h for h in s["hosts"] if h["gpu"] == g["gpu"] and h["agent"]]
        gpus.add_row(str(g["gpu"]), f"{len(on_gpu)} / {g.get('slots', '')}",
                     f"{g['used_mib']:.0f} / {g['limit_mib']:.0f}", str(g["base_mib"]),
                     str(sum(h.get("kv_mib", 0) for h in on_gpu)), str(g["extra_mib"] or ""),
                     f"{g.get('free_mib', 0):.0f}", f"{g['budget_mib']:.0f}", g["paused"] or "")
    hosts = Table(title=f"Hosts ({len(s['hosts'])})")
    for col in ("host", "gpu", "agent", "busy", "health", "KV tokens / MiB", "lost"):
        hosts.add_column(col)
    for h in s["hosts"]:
        score = "" if h.get("score") is None else f"{h['score']:.2f}"
        lost = "node gone" if h.get("dead") else str(h["lost"] or "")
        kv = f"{h.get('kv_tokens', 0)} / {h.get('kv_mib', 0)}" if h["agent"] else ""
        hosts.add_row(h["host"], str(h["gpu"]), h["agent"] or "-", "yes" if h["busy"] else "",
                      score, kv, lost)
    queue = f"queue: {s['queued']} tasks, {s['waiting_agents']} agents waiting to be activated"
    return Group(states, gpus, hosts, queue)


def failed_view(f: dict[str, Any]) -> Group:
    agents = Table(title=f"FAILED agents ({len(f['agents'])})")
    agents.add_column("agent")
    agents.add_column("reason")
    for a in f["agents"]:
        agents.add_row(a["agent_id"], a["reason"] or "")
    letters = Table(title=f"dead-letter tasks ({len(f['dead_letters'])})")
    for col in ("task", "agent", "tier", "score", "reason"):
        letters.add_column(col)
    for d in f["dead_letters"]:
        letters.add_row(d["task_id"], d["agent_id"], str(d["tier"]), f"{d['score']:.2f}", d["reason"])
    return Group(agents, letters)


def inspect_view(i: dict[str, Any]) -> Group:
    head = Table(title=f"agent {i['agent_id']}", show_header=False)
    for key in ("state", "priority", "epoch", "host", "queued", "hot", "host_deaths", "failed",
                "restarts", "floor"):
        head.add_row(key, str(i.get(key)))
    versions = Table(title="checkpoint versions")
    for col in ("version", "epoch", "bytes", "sha256"):
        versions.add_column(col)
    for v in i["versions"]:
        versions.add_row(str(v["version"]), str(v["epoch"]), str(v["size"]), v["sha256"][:16])
    reports = Table(title="last health reports")
    for col in ("task", "score", "fault", "action", "tier"):
        reports.add_column(col)
    for r in i["reports"]:
        reports.add_row(r["task_id"], f"{r['score']:.2f}", r["fault"], r["action"], str(r["tier"]))
    trail = Table(title="history")
    for col in ("event", "detail"):
        trail.add_column(col)
    for e in i["history"]:
        detail = " ".join(f"{k}={e[k]}" for k in _FIELDS[2:] if k in e)
        trail.add_row(e["event"], detail)
    return Group(head, versions, reports, trail)
