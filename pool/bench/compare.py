"""No recovery vs naive retry vs tiered self-healing (the same attempt cap) on the shipped workload (issue 3).

Same tasks, same seed, the llama.cpp engine (the shipped SmolLM2 GGUF), one batch run per policy
through the whole pool (`pool.driver.batch.run_batch`), on a private local Ray. Reports success rate,
failed rate and tokens spent per policy, prints a table and writes OUT/compare.json; each
policy's run folder (results.parquet, events.jsonl, summary.json) is kept under OUT/<policy>.

A run over all 320 shipped tasks takes roughly 10 minutes per policy on 2 cores, so the default is
a representative subset of 96 tasks stratified by kind (json, label, answer, free in the
workload's proportions); `--limit 0` runs them all.

    python scripts/compare_recovery.py --limit 96 --out out/compare
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agents.config import load_settings
from pool.bench.common import start_ray
from pool.bench.healing import CONSTRAINED, POLICIES  # one definition: the same attempt caps
from pool.bench.workload import AGENTS, TASKS, shipped
from pool.driver.batch import RunOptions, run_batch
from pool.driver.synthetic import write_tasks

# Beside the healing policies: what a careful user of llama-server does (one greedy attempt under
# the task's schema or labels), and tiered healing that starts from that attempt (not by default).
RUNS: dict[str, dict[str, Any]] = {
    **POLICIES, "constrained": CONSTRAINED,
    "tiered-constrained-first": {"mode": "tiered", "greedy_constrained_first": True},
}
DEFAULT_RUNS = (*POLICIES, "constrained")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=Path, default=TASKS, help="Tasks (default: the shipped ones).")
    p.add_argument("--agents-file", type=Path, default=AGENTS, help="Agent specs.")
    p.add_argument("--limit", type=int, default=96,
                   help="Stratified subset of N tasks (default 96; 0 = all).")
    p.add_argument("--out", type=Path, default=Path("out/compare"), help="Output folder.")
    p.add_argument("--seed", type=int, default=0, help="Engine (sampling) seed, the same for all.")
    p.add_argument("--policies", default=",".join(DEFAULT_RUNS),
                   help=f"Comma-separated, of: {', '.join(RUNS)} (default: {','.join(DEFAULT_RUNS)}; "
                   "constrained: one greedy schema/label-constrained attempt).")
    p.add_argument("--slots-per-gpu", type=int, help="Hosts (default: the pool's 12).")
    args = p.parse_args(argv)
    args.policies = args.policies.split(",")  # the names, checked once here
    unknown = [n for n in args.policies if n not in RUNS]
    if unknown:
        p.error(f"--policies: unknown {', '.join(unknown)} (of: {', '.join(RUNS)})")
    return args


def run_policy(name: str, tasks_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    pool: dict[str, Any] = {"namespace": f"compare-{name}"}
    if args.slots_per_gpu:
        pool["slots_per_gpu"] = args.slots_per_gpu
    settings = load_settings(overrides={"engine": {"kind": "llama_cpp", "seed": args.seed},
                                        "recovery": RUNS[name],
                                        "pool": pool})
    out = args.out / name
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resumed one
    summary = run_batch(RunOptions(tasks=tasks_path, out=out, settings=settings,  # its pool exits with it
                                   agents_file=args.agents_file if args.agents_file.exists() else None))
    ran = summary["tasks"] - summary["rejected"]
    return {"tasks": ran, "succeeded": summary["succeeded"], "failed": summary["failed"],
            "success_rate": summary["success_rate"],
            "failed_rate": summary["failed"] / ran if ran else 0.0,
            "tokens": summary["tokens"],
            "tokens_per_success": summary["tokens"] / summary["succeeded"] if summary["succeeded"] else None,
            "healed_tier1": summary["healed_tier1"], "healed_tier2": summary["healed_tier2"],
            "mean_attempts": summary["mean_attempts"], "wall_s": summary["wall_s"],
            "correct_rate": summary["correct_rate"], "correct": summary["correct"],
            "tokens_per_correct": summary["tokens"] / summary["correct"] if summary["correct"] else None,
            "false_positive_failures": summary["false_positive_failures"],
            "false_negatives": summary["false_negatives"], "latency_p50_s": summary["latency_p50_s"]}


def table(res: dict[str, Any]) -> Table:
    t = Table(title=f"recovery policies on {res['tasks']} shipped tasks ({res['subset']}), "
                    f"llama.cpp, seed {res['seed']}")
    for col in ("policy", "correct (graded)", "succeeded (monitor)", "FAILED", "correct but failed",
                "wrong but accepted", "mean attempts", "tokens / correct", "latency p50", "wall"):
        t.add_column(col)
    for name, p in res["policies"].items():
        per, cr = p["tokens_per_correct"], p["correct_rate"]
        t.add_row(name, "n/a" if cr is None else f"{100 * cr:.1f}%", f"{100 * p['success_rate']:.1f}%",
                  f"{100 * p['failed_rate']:.1f}%", str(p["false_positive_failures"]),
                  str(p["false_negatives"]), f"{p['mean_attempts']:.2f}",
                  "n/a" if per is None else f"{per:,.0f}", f"{p['latency_p50_s']:.1f} s",
                  f"{p['wall_s']:.0f} s")
    return t


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    console = Console(stderr=True)
    tasks, _ = shipped(args.limit or None, args.tasks, args.agents_file)
    args.out.mkdir(parents=True, exist_ok=True)
    tasks_path = write_tasks(args.out / "tasks.jsonl", tasks)
    kinds = Counter(t.kind.value for t in tasks)
    subset = (f"stratified subset of {len(tasks)}: " + ", ".join(f"{k} {v}" for k, v in kinds.items())
              if args.limit else "all tasks")
    console.print(f"[bold]compare_recovery[/] {subset}; the full workload takes roughly 10 "
                  "minutes per policy on 2 cores, hence the default subset (--limit 0 for all)")
    start_ray()
    res: dict[str, Any] = {"tasks": len(tasks), "subset": subset, "seed": args.seed,
                           "command": "python scripts/compare_recovery.py " + " ".join(sys.argv[1:]),
                           "policies": {}}
    for name in args.policies:
        console.print(f"[bold]policy {name}[/]")
        res["policies"][name] = run_policy(name, tasks_path, args)
    rates = {k: v["success_rate"] for k, v in res["policies"].items()}
    if "tiered" in rates and len(rates) > 1:
        res["tiered_beats_others"] = all(rates["tiered"] > v for k, v in rates.items() if k != "tiered")
    (args.out / "compare.json").write_text(json.dumps(res, indent=1) + "\n")
    Console(width=None if sys.stdout.isatty() else 160).print(table(res))
    return res

