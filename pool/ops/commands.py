"""The operator commands that attach to a run's live pool: `selfheal status|runs|stop|failed|
retry|pause|resume|inspect` (`retry --out` works on a run's files, with no pool).

They join the cluster `ray start` started (or `--address` / `$RAY_ADDRESS`) and never start one;
`pool.ops.attach` finds the pool's actors and draws the tables. `pool.ops.cli` adds them to the
`selfheal` group.
"""

from __future__ import annotations

import sys

import click

from agents.errors import UsageError
from pool.ops.options import ADDRESS, JSON, NAMESPACE, guard, pool_options, show


@click.command(help="Agents by state, residents per Host with their health score, the VRAM "
                    "ledger and the queue of the running pool.")
@pool_options
@JSON
@click.option("--watch", type=click.FloatRange(min=0.2), metavar="SECONDS",
              help="Refresh every SECONDS until Ctrl-C.")
def status(address: str | None, namespace: str, run: str | None, as_json: bool,
           watch: float | None) -> None:
    from pool.ops import attach as ops

    def go() -> None:
        manager, monitor = ops.attach(address, namespace, run)
        if not watch:
            show(ops.snapshot(manager, monitor), ops.status_view, as_json)
            return
        import time

        from rich.live import Live

        with Live(ops.status_view(ops.snapshot(manager, monitor)), auto_refresh=False) as live:
            while True:
                time.sleep(watch)
                live.update(ops.status_view(ops.snapshot(manager, monitor)), refresh=True)

    guard(go)


@click.command(help="The runs whose pools are live on the cluster (each run has its own).")
@ADDRESS
@NAMESPACE
@JSON
def runs(address: str | None, namespace: str, as_json: bool) -> None:
    from pool.driver.runs import live_runs
    from pool.ops import attach as ops

    def go() -> None:
        ops.connect(address)
        found = live_runs(namespace)
        if as_json:
            show(found, str, as_json)
            return
        for r in found:
            click.echo(f"{r['run']}  (namespace {r['namespace']})")
        if not found:
            click.echo("no live runs")

    guard(go)


@click.command(help="End a run's pool (one kept with `selfheal run --keep-pool`, or a killed "
                    "driver's): its manager, monitor, Hosts and engines exit and the cluster's "
                    "GPU shares are free again. Committed results and checkpoints stay.")
@pool_options
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

    guard(go)


@click.command(help="FAILED agents and dead-lettered tasks, with their reasons.")
@pool_options
@JSON
def failed(address: str | None, namespace: str, run: str | None, as_json: bool) -> None:
    import ray

    from pool.ops import attach as ops

    def go() -> None:
        manager, _ = ops.attach(address, namespace, run)
        show(ray.get(manager.failed.remote(), timeout=30), ops.failed_view, as_json)

    guard(go)


@click.command(help="Release FAILED agents back to DORMANT (tier 3's human step): AGENT_ID... "
                    "or --all. With --out, on a run's files (no pool needed): each agent's failed "
                    "tasks are requeued there, and the next `selfheal run --out OUT` runs them. "
                    "Without it, in the live pool of --run: its next tasks activate it again.")
@click.argument("agent_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Release every FAILED agent.")
@click.option("--out", metavar="FOLDER|URI",
              help="The run's output: a folder, or the s3:// or gs:// URI it ran with. Release "
                   "there and requeue the failed tasks.")
@click.option("--checkpoint-dir", metavar="PATH|URI",
              help="With --out: the run's store, a folder (default OUT/checkpoints; relative: "
                   "under OUT), a file:// URI, or an s3:// or gs:// URI.")
@pool_options
def retry(agent_ids: tuple[str, ...], every: bool, out: str | None, checkpoint_dir: str | None,
          address: str | None, namespace: str, run: str | None) -> None:
    def go() -> None:
        if bool(agent_ids) == every:
            raise UsageError("give AGENT_ID... or --all (not both)")
        if out is None:
            _retry_live(agent_ids, address, namespace, run)
        else:
            _retry_out(agent_ids, out, checkpoint_dir)

    guard(go)


def _retry_out(agent_ids: tuple[str, ...], out: str, checkpoint_dir: str | None) -> None:
    from pool.driver import requeue
    from pool.store.location import run_root
    from pool.store.mirror import held_out

    root = run_root(out, checkpoint_dir or "checkpoints")  # a URI as it is; a path under OUT
    with held_out(out, "selfheal-retry") as (folder, mirror):  # a URI: its copy, pushed back
        done = requeue.retry_offline(folder, root, list(agent_ids) or None)
        if mirror is not None:
            mirror.finish()
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


@click.command(help="Give the pool's GPUs back: each engine sleeps where it can (vLLM on CUDA), "
                    "else every resident agent is checkpointed and parked. Tasks wait until "
                    "`selfheal resume`.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds to wait for running batches to end first.")
@pool_options
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

    guard(go)


@click.command(help="Take the GPUs again after `selfheal pause`: sleeping engines wake up and "
                    "queued tasks run.")
@pool_options
def resume(address: str | None, namespace: str, run: str | None) -> None:
    import ray

    from pool.ops import attach as ops

    def go() -> None:
        manager, _ = ops.attach(address, namespace, run)
        got = ray.get(manager.resume.remote(), timeout=120)
        click.echo(f"resumed; engines woken on gpus {got['woken']}" if got["woken"] else "resumed")

    guard(go)


@click.command(help="One agent: state, checkpoint versions, last health reports and history.")
@click.argument("agent_id")
@pool_options
@JSON
def inspect(agent_id: str, address: str | None, namespace: str, run: str | None,
            as_json: bool) -> None:
    import ray

    from pool.ops import attach as ops

    def go() -> None:
        manager, _ = ops.attach(address, namespace, run)
        info = ray.get(manager.inspect.remote(agent_id), timeout=30)
        if info is None:
            raise UsageError(f"unknown agent {agent_id}")
        show(info, ops.inspect_view, as_json)

    guard(go)


OPERATOR_COMMANDS = (status, runs, stop, failed, retry, pause, resume, inspect)
