"""`selfheal bench`: the system measured against what a user would do otherwise.

Five benchmarks (issue 5), each running both sides of its comparison in the same run, alternating,
and reporting medians and ratios: activation latency (warm-Host bind vs a new actor per agent;
llama.cpp with and without KV restore), scale (registration, memory and disk per agent,
activation latency at N vs 1,000 agents), pool overhead (scripted steps/s vs bare Ray calls;
real-model throughput and latency vs llama-server with as many slots), self-healing (three
policies on one seeded fault mix) and budget fidelity; on request (`--only returning`), returning
agents with long context, pool vs llama-server (issue 11). `run_bench` writes `bench.json` and
`bench.png` under `out`.

This package is the one home of the benchmarks. Two run on their own, each with an entry point in
scripts/: `compare` (no recovery vs naive retry vs tiered healing on the shipped tasks with the
real model, `scripts/compare_recovery.py`) and `migration` (an agent moved off a GPU under
memory pressure vs a new actor, `scripts/migration.py`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

SECTIONS = ("activation", "kv", "scale", "overhead", "real", "ram", "healing", "returning")
# `returning` (480 agents x 3 visits of ~1,000-token personas by default) runs only when asked for
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s != "returning")


@dataclass(frozen=True)
class Sizes:
    rounds: int  # activation rounds: `per_round` hot + disk binds, then one naive actor
    per_round: int
    kv_reps: int  # llama.cpp bind + first answer, with and without KV, each
    kv_turns: int  # remembered exchanges of the KV agent (its snapshot must fit kv_max_bytes)
    scale_agents: int
    scale_small: int  # the reference size
    steps: int  # scripted agent-steps per overhead repetition
    step_agents: int
    reps: int  # overhead repetitions (pool and bare alternate)
    real_tasks: int  # shipped tasks per real-model repetition (0 skips it)
    real_reps: int
    heal_tasks: int
    heal_agents: int
    ram_residents: int = 12  # host RAM: residents on each side (0 skips it)
    ret_agents: int = 480  # returning agents with long context (pool.bench.returning)
    ret_visits: int = 3
    ret_persona_tokens: int = 1000
    ret_server_cache_mib: int = 8192  # llama-server's host-RAM prompt cache: its default


FULL = Sizes(rounds=40, per_round=25, kv_reps=8, kv_turns=6, scale_agents=100_000,
             scale_small=1_000, steps=5_000, step_agents=100, reps=5, real_tasks=32, real_reps=3,
             heal_tasks=10_000, heal_agents=1_000)
QUICK = Sizes(rounds=10, per_round=20, kv_reps=3, kv_turns=6, scale_agents=10_000,
              scale_small=1_000, steps=2_000, step_agents=100, reps=3, real_tasks=0, real_reps=0,
              heal_tasks=1_000, heal_agents=200, ret_agents=24, ret_persona_tokens=500)
TINY = Sizes(rounds=2, per_round=3, kv_reps=1, kv_turns=2, scale_agents=300, scale_small=100,
             steps=100, step_agents=20, reps=1, real_tasks=4, real_reps=1, heal_tasks=120,
             heal_agents=30, ram_residents=2, ret_agents=6, ret_visits=2, ret_persona_tokens=200)


@dataclass(frozen=True)
class BenchOptions:
    out: Path
    sizes: Sizes = FULL
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    seed: int = 0
    real_slots: int | None = None  # Hosts for the real-model throughput (default: the pool's)
    real_one_priority: bool = False  # the real-model throughput's agents all at one priority
    plot: bool = True
    command: str = ""


def _finite(obj: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _llama_available() -> bool:
    try:
        from agents.engines.llama_server import default_model_path

        return default_model_path().exists()
    except Exception:  # no xllamacpp or no model wheel: the llama parts are skipped
        return False


def run_bench(opts: BenchOptions, console: Console | None = None) -> dict[str, Any]:
    from pool.bench import activation, healing, overhead, ram, returning, scale
    from pool.bench.common import console_say, start_ray
    from pool.bench.report import plot, table

    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    say = console_say(console)
    s, work = opts.sizes, opts.out / "work"
    shutil.rmtree(work, ignore_errors=True)  # left by an interrupted run: its stores would refuse us
    opts.out.mkdir(parents=True, exist_ok=True)
    sections = set(opts.sections)
    llama = _llama_available()
    if not llama and sections & {"kv", "real", "ram", "returning"}:
        say("llama.cpp or the shipped model is missing: skipping the real-model parts")
        sections -= {"kv", "real", "ram", "returning"}
    if not s.real_tasks:
        sections.discard("real")
    if not s.ram_residents:
        sections.discard("ram")
    started = time.perf_counter()
    start_ray()
    res: dict[str, Any] = {"meta": {
        "command": opts.command, "sizes": asdict(s), "seed": opts.seed, "sections": sorted(sections),
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    try:
        if "activation" in sections:
            say("activation: warm-Host bind (hot / disk) vs a new actor per agent")
            res["activation"] = activation.bind_vs_naive(work / "act", s.rounds, s.per_round, say)
        if "kv" in sections:
            say("activation with llama.cpp: KV restore vs none")
            res["kv_restore"] = activation.kv_restore(work / "kv", s.kv_reps, s.kv_turns, say)
        if "scale" in sections:
            res["scale"] = scale.scale(s.scale_agents, s.scale_small, work / "scale", opts.seed, say)
        if "overhead" in sections:
            say(f"pool overhead: {s.steps:,} scripted steps x {s.reps}, pool vs bare Ray calls")
            res["overhead"] = overhead.scripted(s.steps, s.step_agents, s.reps, work / "ovh", say)
        if "real" in sections:
            say(f"real model: {s.real_tasks} shipped tasks x {s.real_reps}, pool vs llama-server")
            res["real_model"] = overhead.real_model(s.real_tasks, s.real_reps, work / "real", say,
                                                    opts.real_slots, opts.real_one_priority)
        if "ram" in sections:
            say(f"host RAM: {s.ram_residents} residents, one shared engine vs an engine per Host")
            res["ram"] = ram.host_ram(s.ram_residents, work / "ram", say)
        if "healing" in sections:
            res["healing"] = healing.healing(s.heal_tasks, s.heal_agents, work / "heal", opts.seed, say)
        if "returning" in sections:
            say(f"returning agents: {s.ret_agents} x {s.ret_visits} visits, pool vs llama-server")
            res["returning"] = returning.returning(returning.ReturningSizes(
                agents=s.ret_agents, visits=s.ret_visits, persona_tokens=s.ret_persona_tokens,
                server_cache_mib=s.ret_server_cache_mib, seed=opts.seed), work / "ret", say,
                opts.real_slots)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["meta"]["wall_s"] = time.perf_counter() - started
    res = _finite(res)
    (opts.out / "bench.json").write_text(json.dumps(res, indent=1) + "\n")
    if opts.plot:
        plot(res, opts.out / "bench.png")
    Console(width=None if sys.stdout.isatty() else 160).print(table(res))  # stdout
    say(f"wrote {opts.out / 'bench.json'}" + (f" and {opts.out / 'bench.png'}" if opts.plot else ""))
    return res


def sizes_for(quick: bool, **overrides: int | None) -> Sizes:
    base = QUICK if quick else FULL
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
