"""Migration off a GPU under memory pressure: how long an agent is unavailable (issue 7).

One local Ray with two logical GPUs. The pool runs a workload; after `--pressure-after` seconds
the (simulated) pynvml reading of GPU 0 says the pool holds more than the GPU's limit there, as
when a leak or another tenant takes memory. The ledger's reconciliation sees it, the planner
sheds GPU 0's idle residents, and Hosts still running there see no headroom (OOM, tier 2:
compress, then migrate). Every move is a `pool.migrated` event (from, to, why) whose
`unavailable_s` runs from the moment the agent stopped serving on its old Host to the moment it is
bound on the new one (its checkpoint committed, hot-tier bytes or disk, a warm Host).

Side by side, in the same run (once the pool is stopped, since its Hosts hold every GPU share),
what a Ray user would otherwise do to move an agent: kill its actor and start a new one on the
other GPU that loads the agent's checkpoint from disk (its engine loaded in the constructor),
timed to its first answered call; one per agent the pool moved.

    python scripts/migration.py --out out/migration                  # scripted engine, ~1 min
    python scripts/migration.py --engine llama_cpp --tasks 96 --out out/migration-llama
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.table import Table

from agents.config import Settings, load_settings
from pool.bench.activation import NaiveAgent
from pool.bench.common import NO_FAULTS, stats
from pool.driver.batch import RunOptions, run_batch
from pool.driver.synthetic import synthetic_tasks, write_tasks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["scripted", "llama_cpp"], default="scripted")
    ap.add_argument("--agents", type=int, default=24)
    ap.add_argument("--tasks", type=int, default=1200)
    ap.add_argument("--slots-per-gpu", type=int, default=6)
    ap.add_argument("--pressure-after", type=float, default=None,
                    help="seconds from the engines' start (default: 3 scripted, 60 llama_cpp)")
    ap.add_argument("--step-cost", type=float, default=0.02, help="scripted seconds per step")
    ap.add_argument("--rounds", type=int, default=5, help="pool runs (each then its naive moves)")
    ap.add_argument("--out", type=Path, default=Path("out/migration"))
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    if args.agents < 2 or args.tasks < args.agents:
        console.print("error: need --agents >= 2 and --tasks >= --agents")
        return 2
    after = args.pressure_after if args.pressure_after is not None else (
        3.0 if args.engine == "scripted" else 60.0)

    args.out.mkdir(parents=True, exist_ok=True)
    ray.init(address="local", num_gpus=2, namespace="selfheal-migration",
             include_dashboard=False, log_to_driver=False)
    budget = load_settings().pool
    pressed = int(budget.budget_mib * budget.watermark) + 200  # over the limit, whatever resides
    settings = load_settings(overrides={
        "engine": {"kind": args.engine, "faults": NO_FAULTS, "step_cost_s": args.step_cost,
                   "device": {"used_mib": {0: pressed, 1: 0}, "used_from_s": after}},
        "pool": {"num_gpus": 2, "slots_per_gpu": args.slots_per_gpu, "reconcile_s": 0.5,
                 "batch_per_agent": 2, "namespace": "selfheal-migration"},
    })
    tasks = write_tasks(args.out / "tasks.jsonl",
                        synthetic_tasks(args.tasks, agents=args.agents, seed=7))
    moved: list[dict[str, Any]] = []
    naive: list[float] = []
    summaries: list[dict[str, Any]] = []
    for r in range(args.rounds):  # the pool's moves, then as many new actors, round by round
        console.print(f"round {r + 1}/{args.rounds}: {args.tasks} tasks, {args.agents} agents, "
                      f"2 GPUs x {args.slots_per_gpu} Hosts, {args.engine}; GPU 0 reads "
                      f"{pressed} MiB from {after:.0f} s")
        got = _pool_round(args.out / f"run-{r}", tasks, settings, args.agents)
        if got is None:
            console.print("error: the pool lost or failed tasks; see the run folder")
            return 1
        summaries.append(got[0])
        moved += got[1]
        naive += _naive_round(got[1], args.out / f"run-{r}" / "checkpoints", settings)
    if not moved:
        console.print("error: no agent migrated; raise --tasks or lower --pressure-after")
        return 1

    pool_s = stats(e["unavailable_s"] for e in moved)
    naive_s = stats(naive)
    by_cause = {why: stats(e["unavailable_s"] for e in moved if e["why"].startswith(why))
                for why in ("memory pressure", "tier 2")}
    table = Table(title="agent unavailable during a migration (s)")
    for col in ("way", "moves", "p50", "p90", "p99"):
        table.add_column(col, justify="right")
    rows = [("pool: shed by the planner", by_cause["memory pressure"]),
            ("pool: tier-2 migrate (OOM)", by_cause["tier 2"]), ("pool: all", pool_s),
            ("new actor per agent", naive_s)]
    for name, st in rows:
        figures = (f"{st[q]:.3f}" if st["n"] else "-" for q in ("p50", "p90", "p99"))
        table.add_row(name, str(st["n"]), *figures)
    console.print(table)
    ratio = naive_s["p50"] / pool_s["p50"] if pool_s["p50"] else float("inf")
    pairs = Counter(f"gpu {e['src_gpu']} -> gpu {e['dst_gpu']}" for e in moved)
    console.print(f"p50: pool {pool_s['p50']:.3f} s vs new actor {naive_s['p50']:.3f} s "
                  f"({ratio:.1f}x); moves {dict(pairs)}; every task of {args.rounds} rounds "
                  f"succeeded exactly once")
    report: dict[str, Any] = {"pool": pool_s, "pool_by_cause": by_cause, "new_actor": naive_s,
                              "ratio_p50": ratio, "summaries": summaries, "engine": args.engine,
                              "moves": moved}
    (args.out / "migration.json").write_text(json.dumps(report, indent=2, default=str))
    ray.shutdown()
    return 0


def _pool_round(out: Path, tasks: Path, settings: Settings, agents: int
                ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """One pool run from scratch; its summary and its memory-pressure moves (None when a task
    failed or was lost)."""
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resumed one
    summary = run_batch(RunOptions(tasks=tasks, out=out, settings=settings, agents=agents,
                                   progress=False))
    if summary["succeeded"] != summary["tasks"]:
        return None
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return summary, [e for e in events if e["event"] == "pool.migrated" and "memory pressure" in e["why"]]


def _naive_round(moved: list[dict[str, Any]], store: Path, settings: Settings) -> list[float]:
    """Move each agent the naive way: a new actor that loads its checkpoint, on the other GPU."""
    while ray.available_resources().get("GPU", 0) < 2:  # type: ignore[no-untyped-call]
        time.sleep(0.1)
    took = []
    for e in moved:
        started = time.perf_counter()
        actor = NaiveAgent.options(num_gpus=1 / settings.pool.slots_per_gpu).remote(  # type: ignore[attr-defined]
            e["agent_id"], str(store), settings)
        ray.get(actor.ready.remote())
        took.append(time.perf_counter() - started)
        ray.kill(actor)
    return took

