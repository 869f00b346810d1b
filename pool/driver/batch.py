"""The batch driver behind `selfheal run` and `scripts/run_batch.py`.

It validates the input (bad lines become `rejected` results), skips tasks already committed in
`--out` (resumable; a folder, or an s3:// or gs:// URI mirrored from a local copy:
`pool.store.mirror`), connects to Ray (an existing cluster, else a local one with logical GPUs),
starts a fresh PoolManager, feeds it the tasks, and commits every result to the task ledger as it
arrives. At the end it writes `results.parquet`, `summary.json` and prints a summary table.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agents.config import EngineKind, Settings
from agents.errors import StorageError, UsageError
from agents.events import configure_logging
from agents.models import AgentSpec, Task
from pool.control.manager import PoolManager
from pool.control.slots import memory_plan
from pool.driver.inputs import generated_agents, load_agents, read_tasks
from pool.driver.result_schema import RESULT_SCHEMA
from pool.driver.runs import Holder, OutLock, for_run, live_runs, new_run_id, shutdown_pool, split_namespace
from pool.driver.summary import summarise
from pool.runtime.actors import MANAGER_NAME, MONITOR_NAME
from pool.store.journal import ResultJournal, write_jsonl
from pool.store.location import run_root
from pool.store.mirror import OutMirror, held_out
from pool.store.private import open_private, write_private
from recovery.grade import grade

POLL_S = 0.25
DRAIN_TIMEOUT_S = 60
START_NOTICE_S = 15  # the pool's Hosts not up by then: they wait for GPU shares


@dataclass(frozen=True)
class RunOptions:
    tasks: Path
    out: Path | str  # a folder, or an s3:// or gs:// URI (the driver works in a local copy)
    settings: Settings
    agents: int | None = None
    agents_file: Path | None = None
    address: str | None = None
    progress: bool = True
    keep_pool: bool = False  # leave the run's pool up when it ends (`selfheal stop` ends it)
    run_id: str | None = None  # the pool's namespace is <pool.namespace>-<run_id>; default: random

    @property
    def folder(self) -> Path:
        """The local folder the run writes: `out`, or the local copy of an object-store `out`
        (`run_batch` puts the folder in `out` before anything is written)."""
        if not isinstance(self.out, Path):
            raise TypeError("--out is resolved by run_batch first")
        return self.out


def connect(settings: Settings, address: str | None) -> None:
    """Join the cluster named by `--address` or RAY_ADDRESS (set by `ray job submit`); without
    either, start a private local Ray with logical GPUs. Never guess: joining whichever Ray
    happens to run on the machine would replace another user's PoolManager."""
    if ray.is_initialized():
        return
    ns = settings.pool.namespace
    target = address or os.environ.get("RAY_ADDRESS")
    if not target:
        ray.init(address="local", num_gpus=settings.pool.num_gpus, namespace=ns,
                 log_to_driver=False, include_dashboard=False)
        return
    try:
        ray.init(address=target, namespace=ns, log_to_driver=False)
    except ConnectionError:
        raise UsageError(f"cannot reach a Ray cluster at {target}") from None


def fresh_manager(settings: Settings, store_root: str | Path) -> Any:
    """Replace any PoolManager left by an earlier run (a killed driver's, say)."""
    ns = settings.pool.namespace
    for name in (MANAGER_NAME, MONITOR_NAME):
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=ns), no_restart=True)
    for _ in range(100):  # the name is freed asynchronously
        try:
            ray.get_actor(MANAGER_NAME, namespace=ns)
            time.sleep(0.05)
        except ValueError:
            break
    return PoolManager.options(  # type: ignore[attr-defined]
        name=MANAGER_NAME, namespace=ns, lifetime="detached",
        scheduling_strategy=_on_head(),
    ).remote(settings, str(store_root))


def _on_head() -> NodeAffinitySchedulingStrategy:
    """Pinned to the head node: the pool's control actors must not live on a GPU node that may
    go (soft affinity let Ray place them there). Without a known head, beside this driver."""
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if node["Alive"] and "node:__internal_head__" in node["Resources"]:
            return NodeAffinitySchedulingStrategy(str(node["NodeID"]), soft=False)
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)


def _specs(opts: RunOptions, tasks: list[Task]) -> list[AgentSpec]:
    if opts.agents_file:
        return load_agents(opts.agents_file)
    if opts.agents:
        return generated_agents(opts.agents)
    seen = dict.fromkeys(t.agent_id for t in tasks)
    return [AgentSpec(agent_id=a) for a in seen]


def run_batch(opts: RunOptions) -> dict[str, Any]:
    """Run the batch in a pool of its own (namespace `<pool.namespace>-<run id>`), holding the
    `--out` lock throughout."""
    configure_logging()
    started = time.perf_counter()
    memory_plan(opts.settings)  # a model that is not a GGUF, a context over the budget: before Ray
    opts = replace(opts, settings=for_run(opts.settings, opts.run_id or new_run_id()))
    ns = opts.settings.pool.namespace
    store_root = run_root(opts.out, opts.settings.pool.checkpoint_dir)  # URI out: URI store
    with held_out(opts.out, ns) as (folder, mirror):
        opts = replace(opts, out=folder)
        lock = OutLock.acquire(folder, ns)
        try:
            if lock.stale is None and mirror is not None and mirror.stale:
                with contextlib.suppress(ValueError, TypeError, KeyError):  # a lease not ours
                    lock.stale = Holder.of(mirror.stale)
            return _run_locked(opts, lock, started, store_root, _pusher(mirror))
        finally:
            lock.release()
            if mirror is not None:
                with contextlib.suppress(OSError, StorageError):  # a run cut short: what it committed
                    mirror.push(force=True)


def _pusher(mirror: OutMirror | None) -> Callable[[bool], None]:
    """What the driver calls after each drain (`final`: at the end): pushes an object-store
    `--out`; a push that fails is said once and retried by the next, except the last."""
    failed: list[str] = []

    def push(final: bool) -> None:
        if mirror is None:
            return
        try:
            mirror.finish() if final else mirror.push()
        except (OSError, StorageError) as exc:
            if final:
                raise StorageError(f"cannot write --out {mirror.uri}: {exc}; the run's files are "
                                   f"in {mirror.local}") from exc
            if not failed:
                failed.append(str(exc))
                Console(stderr=True).print(f"[yellow]cannot push to {mirror.uri} ({exc}); the "
                                           f"run goes on in {mirror.local} and tries again[/]")

    return push


def _run_locked(opts: RunOptions, lock: OutLock, started: float, store_root: str,
                push: Callable[[bool], None]) -> dict[str, Any]:
    loaded = read_tasks(opts.tasks)  # read once: the agents may come from it, then checked on it
    specs = _specs(opts, loaded.tasks)
    loaded = loaded.for_agents({s.agent_id for s in specs})
    tasks, rejected = loaded.tasks, loaded.rejected
    ledger = ResultJournal(opts.folder / "ledger.jsonl")
    ledger.append(rejected)
    todo = [t for t in tasks if t.task_id not in ledger]
    console = Console(stderr=True)
    if ledger.notice:  # bad ledger lines were set aside: every valid record is kept
        console.print(f"[yellow]{ledger.notice}[/]")
    console.print(f"[bold]selfheal[/] {len(tasks) + len(rejected)} tasks "
                  f"({len(todo)} to run, {len(ledger)} already committed), {len(specs)} agents, "
                  f"engine {opts.settings.engine.kind.value}, pool {opts.settings.pool.namespace}")
    if todo:
        _drive(opts, specs, todo, ledger, store_root, console, lock, push)
    rows = graded(ledger.rows(), tasks)
    ledger.close()
    events = _read_events(opts.folder / "events.jsonl")
    summary = summarise(rows, events, time.perf_counter() - started)
    _write_results(opts.folder, rows)
    write_private(opts.folder / "summary.json", json.dumps(summary, indent=2).encode())
    push(True)
    console.print(summary_table(summary))
    return summary


def _drive(opts: RunOptions, specs: list[AgentSpec], todo: list[Task], ledger: ResultJournal,
           store_root: str, console: Console, lock: OutLock, push: Callable[[bool], None]) -> None:
    connect(opts.settings, opts.address)
    ns = opts.settings.pool.namespace
    if lock.stale is not None and shutdown_pool(lock.stale.namespace):  # a killed driver's pool
        console.print(f"took over {opts.folder} from a dead driver ({lock.stale.line()}) and shut "
                      f"its pool down")
    manager = fresh_manager(opts.settings, store_root)
    try:
        _wait_for_results(opts, specs, todo, ledger, console, manager, push)
    finally:
        if opts.keep_pool:
            with contextlib.suppress(RayActorError):
                ray.get(manager.keep.remote(), timeout=DRAIN_TIMEOUT_S)
            run_id = split_namespace(ns)[1]
            console.print(f"pool kept: `selfheal status --run {run_id}`; "
                          f"`selfheal stop --run {run_id}` ends it")
        else:
            shutdown_pool(ns)


def _wait_for_results(opts: RunOptions, specs: list[AgentSpec], todo: list[Task],
                      ledger: ResultJournal, console: Console, manager: Any,
                      push: Callable[[bool], None]) -> None:
    ns = opts.settings.pool.namespace
    boot = _feed(manager, specs, todo, console, ns)
    waiting = {t.task_id for t in todo}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=not opts.progress) as bar:
        job = bar.add_task("tasks", total=len(todo))
        stuck = False  # every GPU over its memory limit: nothing can run until memory is freed
        paused = False  # the GPUs are given back (`selfheal pause`) until `selfheal resume`
        while waiting:
            time.sleep(POLL_S)
            got = _drain(manager)
            if got is None:
                continue
            new = ledger.append(r for r in got["results"] if r.task_id in waiting)
            waiting.difference_update(r.task_id for r in new)
            write_jsonl(opts.folder / "events.jsonl", got["events"])
            push(False)
            pressed = got["pressed"]
            bar.update(job, advance=len(new), description=_describe(pressed, got["paused"]))
            if got["paused"] and not paused:
                console.print("[yellow]the pool is paused[/] (`selfheal pause`): tasks wait until "
                              "`selfheal resume`")
            paused = got["paused"]
            if len(pressed) == got["gpus"] and not stuck:
                write_jsonl(opts.folder / "events.jsonl", [{"event": "driver.waiting_for_memory",
                                                         "ts": time.time(), "gpus": pressed}])
                console.print("[yellow]every GPU is over its memory limit[/] (another process "
                              "holds it?): tasks wait until a reading shows it freed; see "
                              "`selfheal status`")
            stuck = len(pressed) == got["gpus"]
            if got["boot"] != boot and waiting:  # the manager restarted empty: feed it again
                write_jsonl(opts.folder / "events.jsonl", [{"event": "driver.manager_restarted",
                                                         "resubmitted": len(waiting)}])
                boot = _feed(manager, specs, [t for t in todo if t.task_id in waiting], console,
                             ns)
    got = _drain(manager)
    write_jsonl(opts.folder / "events.jsonl", got["events"] if got else [])
    if opts.settings.engine.kind is not EngineKind.SCRIPTED:  # the shared engines' figures
        from agents.engines.shared import engine_events

        write_jsonl(opts.folder / "events.jsonl", engine_events(opts.settings.pool.namespace))


def _describe(pressed: list[dict[str, Any]], paused: bool) -> str:
    """The progress bar's label: paused, or the GPUs under memory pressure, if any."""
    if paused:
        return "tasks (paused: waiting for `selfheal resume`)"
    over = ", ".join(f"GPU {p['gpu']} {p['used_mib']}/{p['limit_mib']} MiB" for p in pressed)
    return f"tasks (over memory limit: {over})" if over else "tasks"


def _feed(manager: Any, specs: list[AgentSpec], tasks: list[Task], console: Console,
          namespace: str) -> str | None:
    """Start the manager, register the agents and submit the tasks; its boot id, or None when it
    died on the way (the next drain then sees a new boot id and feeds it again)."""
    try:
        boot: str = ray.get(manager.drain.remote(), timeout=DRAIN_TIMEOUT_S)["boot"]
        _started(manager, console, namespace)
        for i in range(0, len(specs), 5000):
            ray.get(manager.register.remote(specs[i : i + 5000]))
        ray.get(manager.submit.remote([(t, None) for t in tasks]))
    except (RayActorError, GetTimeoutError):
        return None
    return boot


def _started(manager: Any, console: Console, namespace: str) -> None:
    """Wait for the pool's Hosts; say so when they wait for GPU shares another run holds."""
    ref = manager.start.remote()
    ready, _ = ray.wait([ref], timeout=START_NOTICE_S)
    if not ready:
        prefix, mine = split_namespace(namespace)
        others = [r["run"] for r in live_runs(prefix) if r["run"] != mine]
        console.print(f"waiting for the cluster's GPU shares (live runs: {', '.join(others) or '-'}"
                      "); the pool starts when they are free")
    ray.get(ref)


def _drain(manager: Any) -> dict[str, Any] | None:
    """The manager's new results and events; None while it is dead or restarting."""
    try:
        got: dict[str, Any] = ray.get(manager.drain.remote(), timeout=DRAIN_TIMEOUT_S)
    except (RayActorError, GetTimeoutError):
        time.sleep(POLL_S)
        return None
    return got


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn line from a killed driver
    return out


def graded(rows: list[dict[str, Any]], tasks: list[Task]) -> list[dict[str, Any]]:
    """Rows with `correct` filled by the grader from each task's answer key (never seen by the
    monitor); None for rejected tasks and tasks without a key."""
    keys = {t.task_id: t for t in tasks}
    out = []
    for r in rows:
        t = keys.get(r["task_id"]) if r["status"] != "rejected" else None
        out.append({**r, "correct": grade(t.kind, r["output"], t.expected) if t else None})
    return out


def _write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    tmp = out / "results.parquet.tmp"
    with open_private(tmp, "wb") as fh:  # agents' answers: owner-only
        pq.write_table(table, fh)
    tmp.replace(out / "results.parquet")


def summary_table(s: dict[str, Any]) -> Table:
    table = Table(title="selfheal run", show_header=False)
    rows = [
        ("tasks", s["tasks"]), ("succeeded", s["succeeded"]),
        ("healed by tier 1 / tier 2", f"{s['healed_tier1']} / {s['healed_tier2']}"),
        ("failed", s["failed"]), ("rejected", s["rejected"]),
        ("success rate (monitor's verdict)", f"{100 * s['success_rate']:.1f}%"),
        ("correct (graded by the answer key)",
         f"{s['correct']} / {s['graded']}" + (f" ({100 * s['correct_rate']:.1f}%)" if s["graded"] else "")),
        ("monitor vs grader", f"{s['false_positive_failures']} correct answers failed, "
                              f"{s['false_negatives']} wrong answers accepted"),
        ("task latency p50 / p95", f"{s['latency_p50_s']:.3f} s / {s['latency_p95_s']:.3f} s"),
        ("tokens/s (of them votes)", f"{s['tokens_per_s']:.1f} "
                                     f"({100 * s['vote_tokens'] / max(1, s['tokens']):.0f}%)"),
        ("tasks/s", f"{s['tasks_per_s']:.1f}"),
        ("activations (p50 / p99)",
         f"{s['activations']} ({s['activation_p50_ms']:.1f} / {s['activation_p99_ms']:.1f} ms)"),
        ("migrations (unavailable p50)",
         f"{s['migrations']} ({s['migration_unavailable_p50_s']:.3f} s)"),
        ("peak residents per GPU", f"{s['peak_residents_per_gpu']} (cap {s['slots_per_gpu']})"),
        ("peak VRAM ledger", f"{s['peak_ledger_mib']:.0f} / {s['ledger_limit_mib']:.0f} MiB"),
        ("wall time", f"{s['wall_s']:.1f} s"),
    ]
    if s.get("prefix_cache_hit_rate") is not None:
        rows.append(("prefix-cache hit rate", f"{100 * s['prefix_cache_hit_rate']:.1f}%"))
    if s.get("kv_dropped"):
        rows.append(("KV states dropped (over engine.kv_max_bytes)", s["kv_dropped"]))
    for k, v in rows:
        table.add_row(k, str(v))
    return table
