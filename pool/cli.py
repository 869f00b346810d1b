"""`selfheal`: run a batch of agent tasks on Ray, and look after the agents.

Every user mistake (bad flag, file, config value) ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from agents.errors import SelfhealError, UsageError


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


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except UsageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except SelfhealError as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


@click.group(help=__doc__)
def main() -> None:
    pass


@main.command(help="Run the tasks of FILE on a pool of agents and write results to --out.")
@click.option("--tasks", type=click.Path(path_type=Path), default=Path("examples/tasks.jsonl"),
              show_default=True, help="Tasks: JSONL or Parquet, one task per line.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/run"), show_default=True,
              help="Output folder; a rerun with the same folder skips committed tasks.")
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
@click.option("--checkpoint-dir", type=click.Path(path_type=Path),
              help="Checkpoint folder (default OUT/checkpoints).")
@click.option("--seed", type=int, help="Engine seed.")
@click.option("--address", help="Ray cluster address (default: a running one, else local).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def run(tasks: Path, out: Path, agents: int | None, agents_file: Path | None, config: Path | None,
        address: str | None, no_progress: bool, **flags: Any) -> None:
    from agents.config import load_settings
    from pool.batch import RunOptions, run_batch

    def go() -> None:
        settings = load_settings(config, _overrides(**flags))
        default_agents = tasks.parent / "agents.jsonl"
        chosen = agents_file or (default_agents if agents is None and default_agents.exists()
                                 and tasks.name == "tasks.jsonl" else None)
        run_batch(RunOptions(tasks=tasks, out=out, settings=settings, agents=agents,
                             agents_file=chosen, address=address, progress=not no_progress))

    _guard(go)


if __name__ == "__main__":
    main()
