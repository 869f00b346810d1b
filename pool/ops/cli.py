"""`selfheal`: run a batch of agent tasks on Ray, and look after the agents.

Every user mistake (bad flag, file, config value) ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from agents.errors import UsageError
from pool.ops.commands import OPERATOR_COMMANDS
from pool.ops.options import JSON, guard


def _overrides(**flags: Any) -> dict[str, Any]:
    """CLI flags -> nested config overrides (only the flags that were given)."""
    where = {
        "engine": ("engine", "kind"), "model_path": ("engine", "model_path"),
        "seed": ("engine", "seed"), "recovery": ("recovery", "mode"),
        "budget_mib": ("pool", "budget_mib"), "slots_per_gpu": ("pool", "slots_per_gpu"),
        "num_gpus": ("pool", "num_gpus"), "checkpoint_dir": ("pool", "checkpoint_dir"),
    }
    out: dict[str, Any] = {}
    for flag, value in flags.items():
        if value is not None:
            section, key = where[flag]
            out.setdefault(section, {})[key] = str(value) if isinstance(value, Path) else value
    return out


@click.group(help=__doc__)
def main() -> None:
    pass


@main.command(help="Run the tasks of FILE on a pool of agents and write results to --out.")
@click.option("--tasks", type=click.Path(path_type=Path), default=Path("examples/tasks.jsonl"),
              show_default=True, help="Tasks: JSONL or Parquet, one task per line.")
@click.option("--out", metavar="FOLDER|URI", default="out/run", show_default=True,
              help="The output: a folder, or an s3:// or gs:// URI (the driver works in a local "
                   "copy under ~/.cache/selfheal and pushes it there every few seconds); a rerun "
                   "with the same --out skips committed tasks.")
@click.option("--agents", type=click.IntRange(min=1), help="Generate N agents (agent-000000...).")
@click.option("--agents-file", type=click.Path(path_type=Path),
              help="Agent specs (JSONL/Parquet). Default: examples/agents.jsonl beside the "
                   "default tasks, else one default agent per agent_id in the tasks.")
@click.option("--engine", type=click.Choice(["llama_cpp", "vllm", "scripted"]),
              help="Model runtime (default llama_cpp: the shipped SmolLM2 GGUF).")
@click.option("--model-path", type=click.Path(path_type=Path), help="A GGUF file or HF folder.")
@click.option("--recovery", type=click.Choice(["tiered", "naive", "none"]),
              help="Recovery policy (default tiered).")
@click.option("--config", type=click.Path(path_type=Path), help="YAML or TOML config file.")
@click.option("--budget-mib", type=int, help="VRAM budget per GPU in MiB (default 8192).")
@click.option("--slots-per-gpu", type=int, help="Resident agents per GPU (default 12).")
@click.option("--num-gpus", type=int, help="Logical GPUs of a local Ray (default 1).")
@click.option("--checkpoint-dir", metavar="PATH|URI",
              help="The store: a folder (default OUT/checkpoints; relative: under OUT), a "
                   "file:// URI, or an s3:// or gs:// URI every node reads.")
@click.option("--seed", type=int, help="Engine seed.")
@click.option("--address", help="Ray cluster to join ('auto' = the one `ray start` started); "
              "default: $RAY_ADDRESS, else a private local Ray.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--keep-pool", is_flag=True, help="Leave the run's pool (manager, monitor, Hosts, "
              "engines) up when the run ends, for `selfheal status`; `selfheal stop` ends it. By "
              "default a run gives the cluster its GPU shares back when it ends.")
@click.option("--run-id", callback=lambda _c, _p, v: _run_id(v),
              help="Name the run's pool (namespace <pool.namespace>-RUN_ID); default: random.")
def run(tasks: Path, out: str, agents: int | None, agents_file: Path | None, config: Path | None,
        address: str | None, no_progress: bool, keep_pool: bool, run_id: str | None,
        **flags: Any) -> None:
    from agents.config import load_settings
    from pool.driver.batch import RunOptions, run_batch

    def go() -> None:
        settings = load_settings(config, _overrides(**flags))
        default_agents = tasks.parent / "agents.jsonl"
        chosen = agents_file or (default_agents if agents is None and default_agents.exists()
                                 and tasks.name == "tasks.jsonl" else None)
        run_batch(RunOptions(tasks=tasks, out=out, settings=settings, agents=agents,
                             agents_file=chosen, address=address, progress=not no_progress,
                             keep_pool=keep_pool, run_id=run_id))

    guard(go)


def _run_id(value: str | None) -> str | None:
    import re

    if value is not None and not re.fullmatch(r"[a-z0-9]{1,32}", value):
        raise click.BadParameter("1 to 32 lowercase letters and digits", param_hint="--run-id")
    return value


@main.command(help="How many agents one GPU holds with a GGUF model, and the arithmetic: the "
                   "engine base (weights once per GPU, compute buffers) plus one KV slot of --ctx "
                   "tokens per resident agent, under --budget-mib x --watermark.")
@click.option("--model", "model", type=click.Path(path_type=Path),
              help="GGUF file (default: the shipped SmolLM2-135M-Instruct Q4_1).")
@click.option("--shape", type=click.Choice(["llama-3.2-1b", "llama-3.2-3b"]),
              help="Instead of --model: a Llama-shaped 4-bit model by its published GGUF header.")
@click.option("--budget-mib", type=click.IntRange(min=64), default=8192, show_default=True,
              help="VRAM of one GPU in MiB.")
@click.option("--ctx", type=click.IntRange(min=256, max=32768), default=2048, show_default=True,
              help="Context of one agent (its KV slot) in tokens.")
@click.option("--watermark", type=click.FloatRange(min=0, max=1, min_open=True), default=0.85,
              show_default=True, help="Share of the budget the pool may fill.")
@click.option("--slots-per-gpu", type=click.IntRange(min=1, max=256), default=12,
              show_default=True, help="Cap on residents per GPU.")
@click.option("--compute-mib", type=click.FloatRange(min=0), default=64.0, show_default=True,
              help="Reserve for llama.cpp's compute buffers (the engine reports its own at start).")
@click.option("--cache-type", type=click.Choice(["f16", "bf16", "f32", "q8_0", "q4_0"]),
              default="f16", show_default=True, help="KV cache element type.")
@JSON
def plan(model: Path | None, shape: str | None, budget_mib: int, ctx: int, watermark: float,
         slots_per_gpu: int, compute_mib: float, cache_type: str, as_json: bool) -> None:
    from agents.engines.llama_server import model_file
    from agents.engines.memory import LLAMA_3_2_1B, LLAMA_3_2_3B, plan_memory, read_shape

    def go() -> None:
        known = {"llama-3.2-1b": LLAMA_3_2_1B, "llama-3.2-3b": LLAMA_3_2_3B}
        if shape and model:
            raise UsageError("--model and --shape: give one")
        m = known[shape] if shape else read_shape(model_file(model))
        p = plan_memory(m, budget_mib, watermark, ctx, slots_per_gpu, compute_mib, cache_type)
        if as_json:
            import json

            click.echo(json.dumps({"model": m.name, "kv_bytes_per_token": p.kv_bytes_per_token,
                                   "slot_mib": p.slot_mib, "base_mib": p.base_mib,
                                   "limit_mib": p.limit_mib, "fit": p.fit, "residents": p.residents}))
            return
        click.echo("\n".join(p.lines()))

    guard(go)


@main.command(help="A Grafana dashboard of the selfheal_* metrics (agents by state, residents, "
                   "memory, recoveries by tier, task rates), as JSON to import in Grafana; "
                   "--install puts it beside Ray's own dashboards in this machine's Ray session.")
@click.option("--install", "do_install", is_flag=True,
              help="Write it into /tmp/ray/session_latest/metrics/grafana/dashboards.")
def grafana(do_install: bool) -> None:
    import json

    from pool.ops.grafana import dashboard, install

    def go() -> None:
        if do_install:
            click.echo(f"wrote {install()}; restart Grafana (or wait for its rescan) to see it")
        else:
            click.echo(json.dumps(dashboard(), indent=2))

    guard(go)


def _add_commands() -> None:
    """The operator commands (`pool.ops.commands`) and `bench` (`pool.bench.cli`)."""
    from pool.bench.cli import bench

    for command in (*OPERATOR_COMMANDS, bench):
        main.add_command(command)


_add_commands()


if __name__ == "__main__":
    main()
