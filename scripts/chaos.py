"""The long chaos run: random kills during scripted batches, then the three checks.

    python scripts/chaos.py --minutes 10

Starts a local Ray of its own (never another Ray on the machine), runs rounds of scripted tasks
(each round a `run_batch` into `OUT/round-K`, all rounds sharing one checkpoint store, so agents
keep their state across rounds) and, every `--kill-every` seconds, SIGKILLs a random live Host, or
the PoolManager (`--manager-share`) or the HealthMonitor (`--monitor-share`), found by pid in this
cluster. After `--minutes` the killing stops, the current round finishes, and the script prints the
three checks of `pool.ops.checks` (ledger exactly-once, resources back to total, every checkpoint
verifies) with tasks, kills, lost, duplicates and recovery time p50/p99. Recovery time of a kill:
until the killed actor runs again under a new pid and the ledger has committed a new record.
Exit status 0 when every check passes.
"""

from __future__ import annotations

import os
import secrets

os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")  # never join another Ray on the machine
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # and let no other driver join ours

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from agents.config import load_settings  # noqa: E402
from pool.driver.batch import RunOptions, run_batch  # noqa: E402
from pool.driver.synthetic import synthetic_tasks, write_tasks  # noqa: E402
from pool.ops.checks import (  # noqa: E402
    Check,
    actor_pids,
    check_checkpoints,
    check_ledger,
    check_resources,
    expected_ids,
)
from pool.runtime.actors import MANAGER_NAME, MONITOR_NAME  # noqa: E402

NAMESPACE = "selfheal-chaos"


@dataclass
class Kill:
    target: str  # actor name
    pid: int
    at: float  # monotonic
    ledger: Path  # the round's ledger when it happened
    lines: int  # its committed records then
    recovered_s: float | None = None


@dataclass
class State:
    ledger: Path | None = None
    kills: list[Kill] = field(default_factory=list)
    finished: set[Path] = field(default_factory=set)  # ledgers of the rounds that completed
    stop: threading.Event = field(default_factory=threading.Event)


def _lines(path: Path | None) -> int:
    return path.read_bytes().count(b"\n") if path and path.exists() else 0


def _pick(rng: random.Random, pids: dict[str, int], args: argparse.Namespace) -> str | None:
    u = rng.random()
    if u < args.manager_share and MANAGER_NAME in pids:
        return MANAGER_NAME
    if u < args.manager_share + args.monitor_share and MONITOR_NAME in pids:
        return MONITOR_NAME
    hosts = sorted(n for n in pids if n.startswith("host-"))
    return rng.choice(hosts) if hosts else None


def _recoveries(state: State, pids: dict[str, int]) -> None:
    now = time.monotonic()
    for k in state.kills:
        progress = _lines(k.ledger) > k.lines or k.ledger in state.finished
        if k.recovered_s is None and pids.get(k.target, k.pid) != k.pid and progress:
            k.recovered_s = now - k.at


def killer(state: State, args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    next_kill = time.monotonic() + args.kill_every
    while not state.stop.wait(0.05):
        pids = actor_pids()
        _recoveries(state, pids)
        if time.monotonic() < next_kill or state.ledger is None:
            continue
        next_kill = time.monotonic() + args.kill_every
        target = _pick(rng, pids, args)
        if target is None or any(k.target == target and k.recovered_s is None for k in state.kills):
            continue  # still recovering from the last kill: let it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[target], signal.SIGKILL)
            state.kills.append(Kill(target, pids[target], time.monotonic(), state.ledger,
                                    _lines(state.ledger)))


def run_rounds(args: argparse.Namespace, out: Path, state: State) -> list[Path]:
    over = {"engine": {"kind": "scripted", "step_cost_s": args.step_cost},
            "pool": {"namespace": NAMESPACE, "checkpoint_dir": str(out / "checkpoints")}}
    settings = load_settings(overrides=over)
    deadline = time.monotonic() + 60 * args.minutes
    rounds: list[Path] = []
    while time.monotonic() < deadline:
        k = len(rounds)
        folder = out / f"round-{k}"
        folder.mkdir(parents=True)
        tasks = synthetic_tasks(args.tasks, agents=args.agents, seed=args.seed + k, prefix=f"r{k}-")
        path = write_tasks(folder / "tasks.jsonl", tasks)
        state.ledger = folder / "out" / "ledger.jsonl"
        rounds.append(path)
        with open(folder / "driver.log", "w") as log, contextlib.redirect_stderr(log):
            run_batch(RunOptions(tasks=path, out=folder / "out", settings=settings, agents=args.agents,
                                 progress=False))
        state.finished.add(state.ledger)
        print(f"round {k}: {args.tasks} tasks done at {(time.monotonic() - deadline) / 60 + args.minutes:.1f}"
              f" min, {len(state.kills)} kills so far", flush=True)
    state.stop.set()
    return rounds


def report(args: argparse.Namespace, out: Path, rounds: list[Path], state: State, wall: float) -> int:
    ledgers = [check_ledger(p.parent / "out", expected_ids(p)) for p in rounds]
    figures = {key: sum(c.figures[key] for c in ledgers)
               for key in ("tasks", "records", "lost", "unexpected", "duplicates")}
    ledger = Check("ledger", all(c.ok for c in ledgers),
                   f"{len(rounds)} rounds, {figures['tasks']} tasks, {figures['records']} records, "
                   f"lost {figures['lost']}, unexpected {figures['unexpected']}, "
                   f"duplicates {figures['duplicates']}", figures)
    checks = [ledger, check_resources(NAMESPACE), check_checkpoints(out / "checkpoints")]
    by_target: dict[str, int] = {}
    for k in state.kills:
        kind = k.target if not k.target.startswith("host-") else "host"
        by_target[kind] = by_target.get(kind, 0) + 1
    times = sorted(k.recovered_s for k in state.kills if k.recovered_s is not None)
    p50, p99 = _quantile(times, 0.5), _quantile(times, 0.99)
    summary = {"minutes": args.minutes, "wall_s": round(wall, 1), "tasks": figures["tasks"],
               "kills": len(state.kills), "kills_by_target": by_target, "lost": figures["lost"],
               "duplicates": figures["duplicates"], "unexpected": figures["unexpected"],
               "recovered": len(times), "recovery_p50_s": p50, "recovery_p99_s": p99,
               "checks": {c.name: c.ok for c in checks}}
    (out / "chaos.json").write_text(json.dumps(summary, indent=2))
    print(f"chaos: {args.minutes} min of kills, {wall / 60:.1f} min wall, out {out}")
    print(f"tasks {figures['tasks']}  kills {len(state.kills)} {by_target}  lost {figures['lost']}  "
          f"duplicates {figures['duplicates']}  unexpected {figures['unexpected']}")
    print(f"recovery time p50 {p50:.2f} s  p99 {p99:.2f} s  ({len(times)} of {len(state.kills)} "
          f"kills recovered)")
    for c in checks:
        print(c.line())
    return 0 if all(c.ok for c in checks) and len(times) == len(state.kills) else 1


def _quantile(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, required=True, help="How long to keep killing.")
    ap.add_argument("--kill-every", type=float, default=2.0, help="Seconds between kills.")
    ap.add_argument("--manager-share", type=float, default=0.1, help="Share of kills on the manager.")
    ap.add_argument("--monitor-share", type=float, default=0.05, help="Share of kills on the monitor.")
    ap.add_argument("--tasks", type=int, default=1500, help="Tasks per round.")
    ap.add_argument("--agents", type=int, default=300, help="Agents.")
    ap.add_argument("--step-cost", type=float, default=0.002, help="Scripted engine seconds per step.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="Output folder (default: a new temporary folder).")
    args = ap.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="selfheal-chaos-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ray.init(address="local", num_cpus=2, num_gpus=1, namespace=NAMESPACE, include_dashboard=False,
             log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="ray-chaos-"))
    state = State()
    thread = threading.Thread(target=killer, args=(state, args), daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        rounds = run_rounds(args, out, state)
        deadline = time.monotonic() + 60
        while any(k.recovered_s is None for k in state.kills) and time.monotonic() < deadline:
            _recoveries(state, actor_pids())  # the last kills: wait for their actors to return
            time.sleep(0.2)
        return report(args, out, rounds, state, time.monotonic() - started)
    finally:
        state.stop.set()
        thread.join(5)
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
