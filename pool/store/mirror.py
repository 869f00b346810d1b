"""`--out` on an object store: the run works in a local copy and mirrors it to the URI.

Theory of operation. The result journal needs POSIX (appends, fsync, flock), which an object store
does not give, so a driver given `--out s3://bucket/run` (or gs://) works in a local copy
(`$SELFHEAL_CACHE`, default `~/.cache/selfheal`, then `out/<digest of the URI>`) and mirrors it:
- `pull` at the start rebuilds the copy from the URI. The URI is the truth: lines a driver that
  died here wrote but never pushed are not in it, and their tasks run again, as a task whose
  result was never committed does.
- `push` sends the lines appended to `ledger.jsonl` and `events.jsonl` since the last push, each
  as one new object (`ledger.d/000000000007.jsonl`): a push costs what it adds, and an object,
  once written, is never written again. The driver pushes every `PUSH_S` seconds, so a driver
  killed with its machine loses at most that much work, which runs again.
- `finish` pushes the rest, then `results.parquet` and `summary.json` whole.
A lease object (`driver.lease`: host, pid, namespace, refreshed every `LEASE_S / 4` by a thread
of the driver while it holds it) stands in for the local `--out` flock: a driver refuses a URI
whose lease is fresher than `LEASE_S` and takes over an older one (its holder is gone; `stale`
names the pool it left). `pyarrow.fs` offers no atomic create, so two drivers starting in the
same instant can both take the lease: it guards against mistakes, not races.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Final

from agents.errors import StorageError, UsageError
from pool.store.files import ObjectFiles
from pool.store.location import Location, resolve
from pool.store.private import write_private

LOGS: Final = ("ledger.jsonl", "events.jsonl")  # append-only: pushed as new lines, by segment
WHOLE: Final = ("results.parquet", "summary.json")  # written once at the end of a run
LEASE: Final = "driver.lease"
LEASE_S: Final = 120.0  # a lease older than this belongs to a driver that is gone
PUSH_S: Final = 5.0  # the driver's pushes, at most this far apart
SEGMENT: Final = re.compile(r"\d{12}\.jsonl")  # a log's objects: anything else there is not ours


def cache_root() -> Path:
    return Path(os.environ.get("SELFHEAL_CACHE") or Path.home() / ".cache" / "selfheal")


@contextlib.contextmanager
def held_out(out: str | Path, namespace: str) -> Iterator[tuple[Path, OutMirror | None]]:
    """The local folder that a run or a retry on `--out` writes, and its mirror: a folder is
    itself (no mirror); an object-store URI is its copy, pulled under the URI's lease, which is
    released on the way out (pushing is the caller's: a run pushes as it goes)."""
    where = resolve(out)
    if where.is_local:
        yield Path(where.path), None
        return
    mirror = OutMirror(where)
    mirror.acquire(namespace)  # the URI's lease, then its copy pulled
    try:
        yield mirror.local, mirror
    finally:
        mirror.release()


class OutMirror:
    """The local copy of an object-store `--out` and what has been pushed of it."""

    def __init__(self, where: Location, files: ObjectFiles | None = None) -> None:
        self.uri = where.uri
        self.files = files or ObjectFiles(where.filesystem())
        self.root = PurePosixPath(where.path)
        self.local = cache_root() / "out" / hashlib.sha256(where.uri.encode()).hexdigest()[:16]
        self._sent: dict[str, int] = {}  # log name -> bytes of the local copy pushed
        self._segments: dict[str, int] = {}  # log name -> number of its next segment
        self._pushed_at = 0.0
        self._me: dict[str, Any] = {}
        self._released = threading.Event()  # set when this driver gives the lease up
        self._lease_lock = threading.Lock()  # a refresh never lands after the release's delete
        self.stale: dict[str, Any] | None = None  # the lease a gone driver left, if any

    # -- lease --------------------------------------------------------------------------------
    def acquire(self, namespace: str) -> None:
        """Take the URI's lease (UsageError when a live driver holds it), then pull."""
        held = self._lease()
        if held is not None and (age := time.time() - held["ts"]) < LEASE_S:
            raise UsageError(f"--out {self.uri} is in use by a driver (pid {held.get('pid')} on "
                             f"{held.get('host')}, seen {age:.0f} s ago)")
        self.stale = held
        self._me = {"pid": os.getpid(), "host": socket.gethostname(), "namespace": namespace,
                    "since": time.time()}
        for folder in (self.root, *(self.root / _folder(n) for n in LOGS)):
            self.files.make_dir(folder)
        self._write_lease()
        self._released.clear()
        threading.Thread(target=self._keep, name="out-lease", daemon=True).start()
        self.pull()

    def _keep(self) -> None:
        """Refresh the lease while it is held: a driver busy elsewhere (registering a million
        agents, say) for longer than `LEASE_S` must not look gone."""
        while not self._released.wait(LEASE_S / 4):
            with self._lease_lock, contextlib.suppress(OSError, StorageError):  # next one retries
                if not self._released.is_set():
                    self._write_lease()

    def release(self) -> None:
        with self._lease_lock:
            self._released.set()
            with contextlib.suppress(OSError, StorageError):  # an old lease expires by itself
                self.files.delete(self.root / LEASE)

    def _lease(self) -> dict[str, Any] | None:
        """The lease there, its `ts` a number; None when there is none or it does not parse."""
        try:
            held: dict[str, Any] = json.loads(self.files.get(self.root / LEASE))
            held["ts"] = float(held["ts"])  # TypeError for a lease that is not an object
        except (OSError, ValueError, TypeError, KeyError, StorageError):
            return None
        return held

    def _write_lease(self) -> None:
        self.files.put_small(self.root / LEASE, json.dumps({**self._me, "ts": time.time()}).encode())

    # -- pull, push, finish -------------------------------------------------------------------
    def pull(self) -> None:
        """Rebuild the local copy from the URI: each log is its segments, in order; a file the
        URI lacks is removed from the copy."""
        self.local.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in LOGS:
            folder = self.root / _folder(name)
            names = sorted(n for n in self.files.names(folder) if SEGMENT.fullmatch(n))
            data = b"".join(self._segment(folder / n) for n in names)
            _replace(self.local / name, data if names else None)
            self._sent[name] = len(data)
            self._segments[name] = int(names[-1].split(".")[0]) + 1 if names else 0
        for name in WHOLE:
            there = self.files.exists(self.root / name)
            _replace(self.local / name, self.files.get(self.root / name) if there else None)

    def _segment(self, path: PurePosixPath) -> bytes:
        data = self.files.get(path)
        return data if data.endswith(b"\n") else data + b"\n"  # never glue two lines together

    def push(self, force: bool = False) -> int:
        """Send what the logs gained since the last push (complete lines only); every `PUSH_S`
        unless `force`. The bytes sent."""
        if not force and time.monotonic() - self._pushed_at < PUSH_S:
            return 0
        self._pushed_at = time.monotonic()
        sent = 0
        for name in LOGS:
            path = self.local / name
            if not path.exists():
                continue
            with open(path, "rb") as fh:
                fh.seek(self._sent.get(name, 0))
                new = fh.read()
            new = new[: new.rfind(b"\n") + 1]  # a line being written goes with the next push
            if not new:
                continue
            n = self._segments.get(name, 0)
            self.files.put(self.root / _folder(name) / f"{n:012d}.jsonl", new)
            self._segments[name], self._sent[name] = n + 1, self._sent.get(name, 0) + len(new)
            sent += len(new)
        return sent

    def finish(self) -> None:
        """The last push, then the run's results and summary, whole."""
        self.push(force=True)
        for name in WHOLE:
            if (self.local / name).exists():
                self.files.put(self.root / name, (self.local / name).read_bytes())


def _folder(log: str) -> str:
    """Where a log's segments live: `ledger.jsonl` -> `ledger.d`."""
    return log.split(".")[0] + ".d"


def _replace(path: Path, data: bytes | None) -> None:
    """The local file becomes `data` (None: it is removed)."""
    if data is None:
        path.unlink(missing_ok=True)
    else:
        write_private(path, data)
