"""Migration off a GPU under memory pressure: how long an agent is unavailable (issue 7).

One local Ray with two logical GPUs. The pool runs a workload; after `--pressure-after` seconds
the (simulated) pynvml reading of GPU 0 says the pool holds more than the GPU's limit there, as
when a leak or another tenant takes memory. The ledger's reconciliation sees it, the planner
sheds GPU 0's idle residents, and Hosts still running there see no headroom (OOM, tier 2:
compress, then migrate). Every move is a `pool.migrated` event (from, to, why) whose
`unavailable_s` runs from the moment the agent stopped serving on its old Host to the moment it is
bound on the new one (its checkpoint committed, hot-tier bytes or disk, a warm Host).

Side by side, in the same run, what a Ray user would otherwise do to move an agent: kill its
actor and start a new one on the other GPU that loads the agent's checkpoint from disk (its
engine loaded in the constructor), timed to its first answered call.

    python scripts/migration.py --out out/migration                  # scripted engine, ~1 min
    python scripts/migration.py --engine llama_cpp --tasks 96 --out out/migration-llama
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.table import Table

from agents.config import load_settings
from pool.batch import RunOptions, run_batch
from pool.bench.activation import NaiveAgent
from pool.bench.common import NO_FAULTS, stats
from pool.synthetic import synthetic_tasks, write_tasks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["scripted", "llama_cpp"], default="scripted")
    ap.add_argument("--agents", type=int, default=24)
    ap.add_argument("--tasks", type=int, default=1200)
    ap.add_argument("--slots-per-gpu", type=int, default=6)
    ap.add_argument("--pressure-after", type=float, default=None,
                    help="seconds from the engines' start (default: 3 scripted, 60 llama_cpp)")
    ap.add_argument("--step-cost", type=float, default=0.02, help="scripted seconds per step")
    ap.add_argument("--out", type=Path, default=Path("out/migration"))
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    if args.agents < 2 or args.tasks < args.agents:
        console.print("error: need --agents >= 2 and --tasks >= --agents")
        return 2
    after = args.pressure_after if args.pressure_after is not None else (
        3.0 if args.engine == "scripted" else 60.0)

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
    console.print(f"pool: {args.tasks} tasks, {args.agents} agents, 2 GPUs x {args.slots_per_gpu} "
                  f"Hosts, {args.engine}; GPU 0 reads {pressed} MiB from {after:.0f} s")
    summary = run_batch(RunOptions(tasks=tasks, out=args.out / "run", settings=settings,
                                   agents=args.agents, progress=True))
    events = [json.loads(line) for line in (args.out / "run" / "events.jsonl").read_text().splitlines()]
    moved = [e for e in events if e["event"] == "pool.migrated" and "memory pressure" in e["why"]]
    if not moved:
        console.print("error: no agent migrated; raise --tasks or lower --pressure-after")
        return 1

    console.print(f"naive: {len(moved)} moves as a new actor per agent on GPU 1")
    naive: list[float] = []
    store = str(settings.pool.checkpoint_dir if settings.pool.checkpoint_dir.is_absolute()
                else args.out / "run" / "checkpoints")
    for e in moved:
        started = time.perf_counter()
        actor = NaiveAgent.options(num_gpus=1 / args.slots_per_gpu).remote(  # type: ignore[attr-defined]
            e["agent_id"], store, settings)
        ray.get(actor.ready.remote())
        naive.append(time.perf_counter() - started)
        ray.kill(actor)

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
        table.add_row(name, str(st["n"]), *(f"{st[q]:.3f}" for q in ("p50", "p90", "p99")))
    console.print(table)
    ratio = naive_s["p50"] / pool_s["p50"] if pool_s["p50"] else float("inf")
    console.print(f"p50: pool {pool_s['p50']:.3f} s vs new actor {naive_s['p50']:.3f} s "
                  f"({ratio:.1f}x); all {summary['tasks']} tasks: {summary['succeeded']} succeeded, "
                  f"{summary['failed']} failed; moves {[(e['src_gpu'], e['dst_gpu']) for e in moved][:1]}...")
    report: dict[str, Any] = {"pool": pool_s, "pool_by_cause": by_cause, "new_actor": naive_s,
                              "ratio_p50": ratio, "summary": summary, "engine": args.engine,
                              "moves": moved}
    (args.out / "migration.json").write_text(json.dumps(report, indent=2, default=str))
    ray.shutdown()
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
