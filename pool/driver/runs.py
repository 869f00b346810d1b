"""Each run has a pool of its own, and an `--out` folder only one live driver writes.

A run's pool lives in the Ray namespace `<pool.namespace>-<run id>`: its manager, monitor,
Hosts and engines keep their plain names there, so two `ray job submit` jobs on one cluster
never see, let alone kill, each other's actors. When the run ends its pool is shut down and the
cluster's GPU shares are free again (`--keep-pool` keeps it for inspection); a driver killed
with SIGKILL leaves a pool that the next driver over the same `--out` takes down, or that reaps
itself once no driver has drained it for `pool.orphan_timeout_s`.

The `--out` lock is an `flock` on `OUT/.lock`, which holds the driver's pid, host and run: the
kernel drops the lock when its holder dies, however it dies, so a lock that can be taken while
the file names another driver is stale, and is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agents.config import Settings
from agents.errors import UsageError

LOCK_NAME = ".lock"
_WRITTEN = ("ledger.jsonl", "events.jsonl", "results.parquet", "summary.json", LOCK_NAME)


def new_run_id() -> str:
    return secrets.token_hex(4)


def run_namespace(prefix: str, run_id: str) -> str:
    return f"{prefix}-{run_id}"


def split_namespace(namespace: str) -> tuple[str, str]:
    """(prefix, run id) of a run's namespace."""
    prefix, _, run_id = namespace.rpartition("-")
    return prefix, run_id


def for_run(settings: Settings, run_id: str) -> Settings:
    """The settings of one run: its pool in a namespace of its own."""
    pool = settings.pool.model_copy(update={"namespace": run_namespace(settings.pool.namespace, run_id)})
    return settings.model_copy(update={"pool": pool})


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds (or held) an `--out` folder."""

    pid: int
    host: str
    namespace: str
    since: float

    def line(self) -> str:
        return f"pid {self.pid} on {self.host} (run namespace {self.namespace})"

    @classmethod
    def of(cls, d: Any) -> Holder:
        """From its JSON record (a lock file's or an object-store lease's); ValueError,
        TypeError or KeyError for anything else."""
        return cls(int(d["pid"]), str(d["host"]), str(d["namespace"]), float(d["since"]))


class OutLock:
    """The `--out` folder of one live driver. `acquire` refuses a folder in use (UsageError),
    and tells what a stale lock's dead holder left (`stale`): its pool to take down."""

    def __init__(self, fh: IO[str], stale: Holder | None) -> None:
        self._fh = fh
        self.stale = stale

    @classmethod
    def acquire(cls, out: Path, namespace: str) -> OutLock:
        check_out_folder(out)
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = out / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fh = os.fdopen(fd, "r+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fh)
            fh.close()
            who = holder.line() if holder else "another driver"
            raise UsageError(f"{out} is in use by a live driver: {who}") from None
        stale = _read_holder(fh)
        me = Holder(os.getpid(), socket.gethostname(), namespace, time.time())
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": me.pid, "host": me.host, "namespace": me.namespace,
                             "since": me.since}))
        fh.flush()
        return cls(fh, stale)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.seek(0)
            self._fh.truncate()
        self._fh.close()  # closing drops the flock


def _read_holder(fh: IO[str]) -> Holder | None:
    fh.seek(0)
    try:
        return Holder.of(json.loads(fh.read() or "null"))
    except (ValueError, TypeError, KeyError):
        return None


def check_out_folder(out: Path) -> None:
    """Refuse an `--out` another user owns, or whose files are symbolic links (a link would
    make this run write its results, agents' memories included, wherever it points)."""
    if out.is_symlink():
        raise UsageError(f"--out {out} is a symbolic link; give the real folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {out} is not a folder")
    owner = out.stat().st_uid
    if owner != os.geteuid():
        raise UsageError(f"--out {out} belongs to another user (uid {owner}); use a folder of yours")
    for name in _WRITTEN:
        if (out / name).is_symlink():
            raise UsageError(f"--out {out}: {name} is a symbolic link; refusing to write through it")


# -- the pools on a cluster (these need a connected Ray) ------------------------------------
def live_runs(prefix: str) -> list[dict[str, Any]]:
    """The runs whose pool manager is alive on the connected cluster, as `run` / `namespace`."""
    from ray.util import list_named_actors

    from pool.runtime.actors import MANAGER_NAME

    found = [a["namespace"] for a in list_named_actors(all_namespaces=True)
             if a["name"] == MANAGER_NAME and a["namespace"].startswith(f"{prefix}-")]
    return [{"run": ns.removeprefix(f"{prefix}-"), "namespace": ns} for ns in sorted(found)]


def shutdown_pool(namespace: str) -> int:
    """Kill a pool's detached actors (manager, monitor, engines; its Hosts die with the manager
    that owns them). Returns how many actors were killed."""
    import ray

    from agents.engines.shared import shutdown_engines
    from pool.runtime.actors import MANAGER_NAME, MONITOR_NAME

    killed = shutdown_engines(namespace)
    for name in (MONITOR_NAME, MANAGER_NAME):  # the manager last: it may be the caller
        try:
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
            killed += 1
        except ValueError:
            continue
    return killed
