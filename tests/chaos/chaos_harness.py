"""What the chaos tests share: their own local Ray, a batch run in a thread, and the checks.

A module of its own (not `conftest`), so that importing it by name never picks up another
folder's conftest when several test folders are collected together.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.config import Settings, load_settings
from pool.batch import RunOptions, run_batch
from pool.checks import Check, run_checks
from pool.runs import split_namespace
from pool.synthetic import synthetic_tasks, write_tasks

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

    def __init__(self, tmp: Path, n: int, agents: int, cfg: Settings, seed: int = 0) -> None:
        self.tasks = write_tasks(tmp / "tasks.jsonl", synthetic_tasks(n, agents=agents, seed=seed))
        self.out = tmp / "out"
        self.cfg = cfg
        self.n = n
        prefix, run_id = split_namespace(NAMESPACE)  # run_batch puts the pool in NAMESPACE
        pool = cfg.pool.model_copy(update={"namespace": prefix})
        self.opts = RunOptions(tasks=self.tasks, out=self.out, agents=agents, progress=False,
                               settings=cfg.model_copy(update={"pool": pool}), run_id=run_id)
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._go, daemon=True)

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

    def events(self, name: str) -> list[dict[str, Any]]:
        import json

        lines = (self.out / "events.jsonl").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e.get("event") == name]

    def checks(self, quarantined_ok: tuple[str, ...] = ()) -> list[Check]:
        got = run_checks(self.out, self.tasks, self.store_root(), NAMESPACE, quarantined_ok)
        for c in got:
            print(c.line())
        return got


def assert_checks(run: Run, quarantined_ok: tuple[str, ...] = ()) -> list[Check]:
    got = run.checks(quarantined_ok)
    assert all(c.ok for c in got), [c.line() for c in got]
    return got
