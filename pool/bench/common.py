"""What every benchmark shares: a private Ray, pools started and stopped by namespace, statistics.

A benchmark starts its own local Ray (`address="local"`), never joins a running cluster: other
work on the machine must not see it, and it must not see theirs. Each pool it starts lives in its
own namespace, so a pool's named Hosts never collide with those of the pool before it.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ray
from rich.console import Console

from agents.config import DAY_S, Settings, load_settings
from agents.models import AgentSpec, Task, TaskResult
from pool.driver.runs import shutdown_pool
from pool.driver.summary import percentile

Item = TypeVar("Item")
Answer = TypeVar("Answer")

_pools = itertools.count()
Say = Callable[[str], None]


def start_ray() -> None:
    """A private local Ray with one logical GPU (a no-op when this process already has one)."""
    if ray.is_initialized():
        return
    ray.init(address="local", num_gpus=1, num_cpus=os.cpu_count() or 1, namespace="selfheal-bench",
             include_dashboard=False, log_to_driver=False)


def settings(kind: str = "scripted", **sections: dict[str, Any]) -> Settings:
    """Settings with the given engine and section overrides; a pool namespace of its own.

    A benchmark's pool is never reaped as an orphan: it waits undrained while the peer side runs
    (a pass of llama-server can take longer than `pool.orphan_timeout_s`), and its private Ray
    ends with the benchmark's process anyway."""
    overrides: dict[str, Any] = {k: dict(v) for k, v in sections.items()}
    overrides.setdefault("engine", {})["kind"] = kind
    pool = overrides.setdefault("pool", {})
    pool.setdefault("namespace", f"bench-{os.getpid()}-{next(_pools)}")
    pool.setdefault("orphan_timeout_s", DAY_S)
    return load_settings(overrides=overrides)


WAIT_S = 1.0  # the longest a drain of the benchmark waits for a result
GAP_S = 0.05  # between a drain that brought results and the next: results come in bunches
SERVER_CACHE_MIB = 8192  # llama-server's default --cache-ram (its host-RAM prompt cache), for the peer
NO_FAULTS = {"garbage": 0, "truncation": 0, "timeout": 0, "oom": 0, "crash": 0, "permanent": 0}


def stats(values: Iterable[float]) -> dict[str, float]:
    """n, p50, p90, p95, p99, mean, min and max (in the values' unit)."""
    v = sorted(values)
    if not v:
        return {"n": 0, "p50": math.nan, "p90": math.nan, "p95": math.nan, "p99": math.nan,
                "mean": math.nan, "min": math.nan, "max": math.nan}
    return {"n": len(v), "p50": percentile(v, 50), "p90": percentile(v, 90),
            "p95": percentile(v, 95), "p99": percentile(v, 99), "mean": statistics.fmean(v),
            "min": v[0], "max": v[-1]}


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


@dataclass
class Pool:
    """A started PoolManager for one benchmark, and what it has returned so far."""

    settings: Settings
    store_root: Path
    manager: Any
    results: dict[str, TaskResult] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0  # terminal records beyond the first for a task (must stay 0)

    def register(self, specs: list[AgentSpec], chunk: int = 5000, say: Say | None = None) -> float:
        """Register `specs` in chunks; the seconds it took."""
        started = time.perf_counter()
        for i in range(0, len(specs), chunk):
            ray.get(self.manager.register.remote(specs[i : i + chunk]))
            if say and len(specs) > chunk:
                say(f"  registered {min(i + chunk, len(specs)):,} / {len(specs):,}")
        return time.perf_counter() - started

    def run(self, tasks: list[Task], stall_s: float = 120.0, say: Say | None = None) -> float:
        """Submit `tasks` and wait for their terminal results; the seconds from submit to the last.

        Gives up when no result arrives for `stall_s` seconds: what is missing then is lost.
        """
        waiting = {t.task_id for t in tasks}
        started = last = time.perf_counter()
        ray.get(self.manager.submit.remote([(t, None) for t in tasks]))
        done_at, shown = started, started
        while waiting and time.perf_counter() - last < stall_s:
            # a long poll: each result is seen as it comes (the wall time is exact) without
            # asking the manager dozens of times a second (that CPU is the engine's)
            got = ray.get(self.manager.drain.remote(WAIT_S))
            self.events.extend(got["events"])
            for r in got["results"]:
                if r.task_id in self.results:
                    self.duplicates += 1
                    continue
                self.results[r.task_id] = r
                if r.task_id in waiting:
                    waiting.discard(r.task_id)
                    last = done_at = time.perf_counter()
            if say and time.perf_counter() - shown > 5:
                shown = time.perf_counter()
                say(f"  {len(tasks) - len(waiting):,} / {len(tasks):,} tasks")
            if got["results"] and waiting:
                time.sleep(GAP_S)
        self.events.extend(ray.get(self.manager.drain.remote())["events"])
        return done_at - started

    def memory(self, trace: bool | None = None) -> dict[str, int]:
        return ray.get(self.manager.memory.remote(trace))  # type: ignore[no-any-return]

    def stop(self) -> None:
        shutdown_pool(self.settings.pool.namespace)  # engines too: detached, they would outlive it


def start_pool(cfg: Settings, store_root: Path) -> Pool:
    """A fresh PoolManager with warm Hosts (in the settings' own namespace)."""
    from pool.driver.batch import fresh_manager

    store_root.mkdir(parents=True, exist_ok=True)
    manager = fresh_manager(cfg, store_root)
    ray.get(manager.start.remote())
    return Pool(cfg, store_root, manager)


def console_say(console: Console) -> Say:
    started = time.perf_counter()

    def say(text: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:7.1f}s[/] {text}")

    return say


def disk_usage(root: Path) -> tuple[int, int, int]:
    """(allocated bytes, apparent bytes, files) under `root`, folders included."""
    allocated = apparent = files = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                allocated += st.st_blocks * 512
                apparent += st.st_size
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    files += 1
    return allocated, apparent, files


def on_free_slots(slots: int, chains: list[list[Item]],
                  call: Callable[[Item, int], Answer]) -> tuple[float, list[tuple[float, Answer]]]:
    """How a client drives llama-server's `slots` slots: `slots` threads, each taking the next
    chain onto a free slot and calling `call(item, slot)` for its items one after another
    (independent requests are chains of one). The wall time and each item's (latency, answer),
    in the chains' order."""
    free: queue.Queue[int] = queue.Queue()
    for k in range(slots):
        free.put(k)

    def one(chain: list[Item]) -> list[tuple[float, Answer]]:
        slot = free.get()
        try:
            out = []
            for item in chain:
                t0 = time.perf_counter()
                answer = call(item, slot)
                out.append((time.perf_counter() - t0, answer))
            return out
        finally:
            free.put(slot)

    started = time.perf_counter()
    with ThreadPoolExecutor(slots) as ex:
        answers = [a for chain in ex.map(one, chains) for a in chain]
    return time.perf_counter() - started, answers
