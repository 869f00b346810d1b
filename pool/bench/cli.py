"""The `selfheal bench` command (also `scripts/bench.py`)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from pool.bench import DEFAULT_SECTIONS, SECTIONS, BenchOptions, run_bench, sizes_for


@click.command(name="bench", help="Benchmark the pool against what a user would do otherwise: "
               "activation latency, scale, pool overhead, self-healing, budget fidelity. Prints a "
               "table; writes OUT/bench.json and OUT/bench.png. The full run takes up to 30 "
               "minutes on 2 cores; --quick about 3.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench"), show_default=True,
              help="Folder for bench.json and bench.png.")
@click.option("--quick", is_flag=True, help="Small sizes (10k agents, 1k healing tasks, no "
              "real-model throughput): under 3 minutes.")
@click.option("--only", help=f"Comma-separated sections to run, of: {', '.join(SECTIONS)} "
              "(all but returning by default).")
@click.option("--seed", type=int, default=0, show_default=True, help="Fault and sampling seed.")
@click.option("--agents", type=click.IntRange(min=1), help="Agents of the scale benchmark "
              "(at least 100) and of the returning one (default 480).")
@click.option("--visits", type=click.IntRange(min=1), help="Returning: visits per agent (default 3).")
@click.option("--persona-tokens", type=click.IntRange(min=20, max=1300),
              help="Returning: tokens of each agent's persona (default 1000).")
@click.option("--server-cache-mib", type=click.IntRange(min=0), help="Returning: llama-server's "
              "host-RAM prompt cache (default 8192, its own default).")
@click.option("--heal-tasks", type=click.IntRange(min=10), help="Tasks of the self-healing runs.")
@click.option("--real-tasks", type=click.IntRange(min=0),
              help="Shipped tasks per real-model throughput repetition (0 skips it).")
@click.option("--real-slots", type=click.IntRange(min=1),
              help="llama.cpp Hosts (and llama-server slots) for the real-model throughput and the "
              "returning agents (default: the pool's 12).")
@click.option("--real-one-priority", is_flag=True,
              help="Real-model throughput with every agent at one priority (the shipped agents "
              "have 0-9, which llama-server ignores): what honouring them costs a short round.")
@click.option("--no-plot", is_flag=True, help="Do not write bench.png.")
def bench(out: Path, quick: bool, only: str | None, seed: int, agents: int | None,
          visits: int | None, persona_tokens: int | None, server_cache_mib: int | None,
          heal_tasks: int | None, real_tasks: int | None, real_slots: int | None,
          real_one_priority: bool, no_plot: bool) -> None:
    sections = tuple(s.strip() for s in only.split(",")) if only else DEFAULT_SECTIONS
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        click.echo(f"error: unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}",
                   err=True)
        sys.exit(2)
    if agents is not None and agents < 100 and "scale" in sections:
        click.echo("error: --agents of the scale benchmark: at least 100", err=True)
        sys.exit(2)
    sizes = sizes_for(quick, scale_agents=agents if "scale" in sections else None,
                      ret_agents=agents if "returning" in sections else None, ret_visits=visits,
                      ret_persona_tokens=persona_tokens, ret_server_cache_mib=server_cache_mib,
                      heal_tasks=heal_tasks, real_tasks=real_tasks)
    command = "selfheal bench " + shlex.join(sys.argv[1:][1:] if sys.argv[1:2] == ["bench"]
                                             else sys.argv[1:])
    run_bench(BenchOptions(out=out, sizes=sizes, sections=sections, seed=seed,
                           real_slots=real_slots, real_one_priority=real_one_priority,
                           plot=not no_plot, command=command.strip()))
