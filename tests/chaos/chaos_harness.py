"""What the chaos tests share: their own local Ray, a batch run in a thread, and the checks.

A module of its own (not `conftest`), so that importing it by name never picks up another
folder's conftest when several test folders are collected together.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos_inject import executions_dir

from agents.config import Settings, load_settings
from pool.driver.batch import RunOptions, run_batch
from pool.driver.runs import run_namespace, split_namespace
from pool.driver.synthetic import synthetic_tasks, write_tasks
from pool.ops.checks import Check, run_checks

HERE = Path(__file__).resolve().parent
NAMESPACE = "selfheal-chaos"


def start_ray(flag_dir: Path, object_store_mib: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    extra: dict[str, Any] = {}
    if object_store_mib:
        extra["object_store_memory"] = object_store_mib * 1024 * 1024
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ["CHAOS_FLAG_DIR"] = str(flag_dir)  # the driver's side: where executions are counted
    ray.init(address="local", num_cpus=2, num_gpus=1, namespace=NAMESPACE, include_dashboard=False,
             _temp_dir=str(flag_dir / "ray"),
             log_to_driver=False, runtime_env={
                 "worker_process_setup_hook": "chaos_inject.install",
                 "env_vars": {"PYTHONPATH": path, "CHAOS_FLAG_DIR": str(flag_dir)}}, **extra)


def settings(**over: Any) -> Settings:
    """Scripted engine, this module's namespace, plus nested overrides."""
    base: dict[str, Any] = {"engine": {"kind": "scripted"}, "pool": {"namespace": NAMESPACE}}
    for section, values in over.items():
        base.setdefault(section, {}).update(values)
    return load_settings(overrides=base)


class Run:
    """A batch run in a background thread, so the test can break things while it runs."""

    def __init__(self, tmp: Path, n: int, agents: int, cfg: Settings, seed: int = 0,
                 run_id: str | None = None, keep_pool: bool = False) -> None:
        """`run_id` None: the pool lives in NAMESPACE, where the tests find its manager by name;
        another id puts it in `<prefix>-<run_id>` (`self.namespace`), beside other runs' pools."""
        self.tasks = write_tasks(tmp / "tasks.jsonl", synthetic_tasks(n, agents=agents, seed=seed))
        self.out = tmp / "out"
        self.cfg = cfg
        self.n = n
        prefix, default_id = split_namespace(NAMESPACE)  # run_batch puts the pool in NAMESPACE
        run_id = run_id or default_id
        self.namespace = run_namespace(prefix, run_id)
        pool = cfg.pool.model_copy(update={"namespace": prefix})
        self.opts = RunOptions(tasks=self.tasks, out=self.out, agents=agents, progress=False,
                               settings=cfg.model_copy(update={"pool": pool}), run_id=run_id,
                               keep_pool=keep_pool)
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._go, daemon=True)
        if (done := executions_dir()) is not None:  # this run counts its own executions only
            shutil.rmtree(done, ignore_errors=True)

    def _go(self) -> None:
        try:
            self.summary = run_batch(self.opts)
        except BaseException as exc:  # re-raised by join
            self.error = exc

    def start(self) -> Run:
        self.thread.start()
        return self

    def committed(self) -> int:
        ledger = self.out / "ledger.jsonl"
        return ledger.read_bytes().count(b"\n") if ledger.exists() else 0

    def wait_for(self, pred: Callable[[], bool], timeout_s: float = 120, what: str = "") -> None:
        stop = time.monotonic() + timeout_s
        while not pred():
            assert self.thread.is_alive() or pred(), f"the run ended before {what}"
            assert time.monotonic() < stop, f"timed out waiting for {what}"
            time.sleep(0.05)

    def join(self, timeout_s: float = 300) -> dict[str, Any]:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"the run did not finish in {timeout_s} s"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary

    def store_root(self) -> Path:
        return (self.out / self.cfg.pool.checkpoint_dir).resolve()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The run's events in the order written, all of them or those called `name`."""
        import json

        lines = (self.out / "events.jsonl").read_text().splitlines()
        return [e for e in map(json.loads, lines) if name is None or e.get("event") == name]

    def statuses(self) -> Counter[str]:
        import pyarrow.parquet as pq

        return Counter(pq.read_table(self.out / "results.parquet", columns=["status"]).column(0).to_pylist())

    def checks(self, quarantined_ok: tuple[str, ...] = ()) -> list[Check]:
        got = run_checks(self.out, self.tasks, self.store_root(), NAMESPACE, quarantined_ok)
        got.append(check_executions(self.out))
        for c in got:
            print(c.line())
        return got


def check_executions(out: Path) -> Check:
    """Counted engine-side: every succeeded task was executed (a result with no execution behind
    it was made up), and how many executions the pool repeated (the same task, attempt and seed
    run again: after a Host died mid-task, a stall, a manager restart), which is allowed, apart
    from duplicate results, which are not."""
    import pyarrow.parquet as pq

    folder = executions_dir()
    runs: Counter[tuple[str, str, str]] = Counter()
    for log in folder.glob("*.log") if folder else ():
        runs.update(tuple(line.split("\t")) for line in log.read_text().splitlines())  # type: ignore[misc]
    executed = {task for task, _, _ in runs}
    rows = pq.read_table(out / "results.parquet", columns=["task_id", "status"]).to_pylist()
    unexecuted = [r["task_id"] for r in rows if r["status"] == "succeeded" and r["task_id"] not in executed]
    repeated = sum(n - 1 for n in runs.values())
    figures = {"executions": sum(runs.values()), "repeated_executions": repeated,
               "succeeded_never_executed": len(unexecuted)}
    detail = (f"{figures['executions']} executions, {repeated} repeated, "
              f"{len(unexecuted)} succeeded without an execution")
    return Check("executions", not unexecuted and bool(runs), detail, figures)


def baseline(tmp: Path, n: int, agents: int, cfg: Settings, seed: int) -> Counter[str]:
    """The status mix of the same tasks and seeds with nothing killed: what a run under chaos
    is measured against (a check that passes when every task failed is no check)."""
    (tmp / "baseline").mkdir()
    run = Run(tmp / "baseline", n, agents, cfg, seed=seed).start()
    run.join()
    return run.statuses()


def assert_like_baseline(run: Run, base: Counter[str], slack: float) -> None:
    """At least the baseline's successes, less `slack` of the tasks (kills cost some attempts)."""
    got = run.statuses()
    assert got["succeeded"] >= base["succeeded"] - slack * run.n, (dict(got), dict(base))


def assert_checks(run: Run, quarantined_ok: tuple[str, ...] = ()) -> list[Check]:
    got = run.checks(quarantined_ok)
    assert all(c.ok for c in got), [c.line() for c in got]
    return got
