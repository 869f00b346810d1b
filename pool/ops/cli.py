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
@click.option("--address", help="Ray cluster to join ('auto' = the one `ray start` started); "
              "default: $RAY_ADDRESS, else a private local Ray.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--keep-pool", is_flag=True, help="Leave the run's pool (manager, monitor, Hosts, "
              "engines) up when the run ends, for `selfheal status`; `selfheal stop` ends it. By "
              "default a run gives the cluster its GPU shares back when it ends.")
@click.option("--run-id", callback=lambda _c, _p, v: _run_id(v),
              help="Name the run's pool (namespace <pool.namespace>-RUN_ID); default: random.")
def run(tasks: Path, out: Path, agents: int | None, agents_file: Path | None, config: Path | None,
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

    _guard(go)


_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


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
@_JSON
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

    _guard(go)


# -- operating a running pool ---------------------------------------------------------------
_ADDRESS = click.option("--address", envvar="RAY_ADDRESS",
                        help="Ray cluster address (default: $RAY_ADDRESS, else the running one).")
_NAMESPACE = click.option("--namespace", default="selfheal", show_default=True,
                          help="Prefix of the pools' Ray namespaces (config pool.namespace).")
_RUN = click.option("--run", help="The run whose pool to use (`selfheal runs` lists them); "
                                  "default: the only live run.")


def _print(data: Any, view: Callable[[Any], Any], as_json: bool) -> None:
    import json

    from rich.console import Console

    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        Console().print(view(data))


@main.command(help="Agents by state, residents per Host with their health score, the VRAM "
                   "ledger and the queue of the running pool.")
@_ADDRESS
@_NAMESPACE
@_RUN
@_JSON
@click.option("--watch", type=click.FloatRange(min=0.2), metavar="SECONDS",
              help="Refresh every SECONDS until Ctrl-C.")
def status(address: str | None, namespace: str, run: str | None, as_json: bool,
           watch: float | None) -> None:
    from pool.ops import attach as ops

    def go() -> None:
        manager, monitor = ops.attach(address, namespace, run)
        if not watch:
            _print(ops.snapshot(manager, monitor), ops.status_view, as_json)
            return
        import time

        from rich.live import Live

        with Live(ops.status_view(ops.snapshot(manager, monitor)), auto_refresh=False) as live:
            while True:
                time.sleep(watch)
                live.update(ops.status_view(ops.snapshot(manager, monitor)), refresh=True)

    _guard(go)


@main.command(help="The runs whose pools are live on the cluster (each run has its own).")
@_ADDRESS
@_NAMESPACE
@_JSON
def runs(address: str | None, namespace: str, as_json: bool) -> None:
    from pool.driver.runs import live_runs
    from pool.ops import attach as ops

    def go() -> None:
        ops.connect(address)
        found = live_runs(namespace)
        if as_json:
            _print(found, str, as_json)
            return
        for r in found:
            click.echo(f"{r['run']}  (namespace {r['namespace']})")
        if not found:
            click.echo("no live runs")

    _guard(go)


@main.command(help="End a run's pool (one kept with `selfheal run --keep-pool`, or a killed "
                   "driver's): its manager, monitor, Hosts and engines exit and the cluster's "
                   "GPU shares are free again. Committed results and checkpoints stay.")
@_ADDRESS
@_NAMESPACE
@_RUN
def stop(address: str | None, namespace: str, run: str | None) -> None:
    from pool.driver.runs import shutdown_pool
    from pool.ops import attach as ops

    def go() -> None:
        ops.connect(address)
        ns = ops.pick_run(namespace, run)
        killed = shutdown_pool(ns)
        if not killed:
            raise UsageError(f"no pool is running in namespace {ns}")
        click.echo(f"stopped {ns} ({killed} actors)")

    _guard(go)


@main.command(help="FAILED agents and dead-lettered tasks, with their reasons.")
@_ADDRESS
@_NAMESPACE
@_RUN
@_JSON
def failed(address: str | None, namespace: str, run: str | None, as_json: bool) -> None:
    import ray

    from pool.ops import attach as ops

    def go() -> None:
        manager, _ = ops.attach(address, namespace, run)
        _print(ray.get(manager.failed.remote(), timeout=30), ops.failed_view, as_json)

    _guard(go)


@main.command(help="Release FAILED agents back to DORMANT (tier 3's human step): AGENT_ID... "
                   "or --all. With --out, on a run's files (no pool needed): each agent's failed "
                   "tasks are requeued there, and the next `selfheal run --out OUT` runs them. "
                   "Without it, in the live pool of --run: its next tasks activate it again.")
@click.argument("agent_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Release every FAILED agent.")
@click.option("--out", type=click.Path(path_type=Path),
              help="The run's output folder: release there and requeue the failed tasks.")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path),
              help="With --out: the run's checkpoint folder (default OUT/checkpoints).")
@_ADDRESS
@_NAMESPACE
@_RUN
def retry(agent_ids: tuple[str, ...], every: bool, out: Path | None, checkpoint_dir: Path | None,
          address: str | None, namespace: str, run: str | None) -> None:
    def go() -> None:
        if bool(agent_ids) == every:
            raise UsageError("give AGENT_ID... or --all (not both)")
        if out is None:
            _retry_live(agent_ids, address, namespace, run)
        else:
            _retry_out(agent_ids, out, checkpoint_dir)

    _guard(go)


def _retry_out(agent_ids: tuple[str, ...], out: Path, checkpoint_dir: Path | None) -> None:
    from pool.driver.requeue import retry_offline

    root = checkpoint_dir or Path("checkpoints")
    done = retry_offline(out, root if root.is_absolute() else out / root, list(agent_ids) or None)
    for r in done:
        click.echo(r.line(out))
    if not agent_ids and not done:
        click.echo(f"no FAILED agent in {out}")
    if agent_ids and not all(r.released or r.requeued for r in done):
        sys.exit(1)


def _retry_live(agent_ids: tuple[str, ...], address: str | None, namespace: str,
                run: str | None) -> None:
    import ray

    from pool.ops import attach as ops

    manager, _ = ops.attach(address, namespace, run)
    ids = list(agent_ids) or [a["agent_id"] for a in ray.get(manager.failed.remote())["agents"]]
    done = ray.get([manager.release.remote(a) for a in ids], timeout=60)
    for agent_id, ok in zip(ids, done, strict=True):
        click.echo(f"{agent_id}: {'released to DORMANT' if ok else 'not FAILED (unchanged)'}")
    if any(done):
        click.echo("their failed tasks stay failed in the run's ledger: `selfheal retry AGENT "
                   "--out OUT` requeues them for the next `selfheal run --out OUT`", err=True)
    if agent_ids and not all(done):
        sys.exit(1)


@main.command(help="Give the pool's GPUs back: each engine sleeps where it can (vLLM on CUDA), "
                   "else every resident agent is checkpointed and parked. Tasks wait until "
                   "`selfheal resume`.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds to wait for running batches to end first.")
@_ADDRESS
@_NAMESPACE
@_RUN
def pause(timeout_s: float, address: str | None, namespace: str, run: str | None) -> None:
    import ray

    from pool.ops import attach as ops

    def go() -> None:
        manager, _ = ops.attach(address, namespace, run)
        got = ray.get(manager.pause.remote(timeout_s), timeout=timeout_s + 120)
        for g in got["gpus"]:
            how = "engine asleep" if g["mode"] == "slept" else f"{g['parked']} agents parked"
            click.echo(f"gpu {g['gpu']}: {how}")
        click.echo(f"paused in {got['elapsed_s']:.2f} s; `selfheal resume` takes the GPUs again")

    _guard(go)


@main.command(help="Take the GPUs again after `selfheal pause`: sleeping engines wake up and "
                   "queued tasks run.")
@_ADDRESS
@_NAMESPACE
@_RUN
def resume(address: str | None, namespace: str, run: str | None) -> None:
    import ray

    from pool.ops import attach as ops

    def go() -> None:
        manager, _ = ops.attach(address, namespace, run)
        got = ray.get(manager.resume.remote(), timeout=120)
        click.echo(f"resumed; engines woken on gpus {got['woken']}" if got["woken"] else "resumed")

    _guard(go)


@main.command(help="One agent: state, checkpoint versions, last health reports and history.")
@click.argument("agent_id")
@_ADDRESS
@_NAMESPACE
@_RUN
@_JSON
def inspect(agent_id: str, address: str | None, namespace: str, run: str | None,
            as_json: bool) -> None:
    import ray

    from pool.ops import attach as ops

    def go() -> None:
        manager, _ = ops.attach(address, namespace, run)
        info = ray.get(manager.inspect.remote(agent_id), timeout=30)
        if info is None:
            raise UsageError(f"unknown agent {agent_id}")
        _print(info, ops.inspect_view, as_json)

    _guard(go)


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

    _guard(go)


def _add_bench() -> None:
    from pool.bench.cli import bench

    main.add_command(bench)


_add_bench()


if __name__ == "__main__":
    main()
