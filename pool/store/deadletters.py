"""The dead-letter table: failed tasks and agents, kept in the checkpoint store across restarts.

An append-only JSONL file, `dead_letters.jsonl` at the store's root, each append flushed and
fsynced. Rows are facts in order (`recovery.monitor.fold_letters` reads them): a task
dead-lettered (`dead_letter`), an agent failed (`agent_failed`), an agent released by a person
(`released`, which drops its earlier rows). The HealthMonitor appends as it decides and reads the
table back when it starts, so a restarted monitor, or the next run's, still lists them for
`selfheal failed`; `selfheal retry --out` appends the release itself. A torn last line (a writer
killed mid-write) is skipped; a read or write that fails is reported and never stops the monitor.

An object store has no append: there each `append` PUTs one object `dead_letters/<ns>-<pid>.jsonl`
(`pool.store.files.ObjectFiles`), and `read` reads them in name order, which is write order for
one writer (the monitor); rows of two writers interleave by the time each wrote.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path, PurePath
from typing import Any, Final

import pyarrow.fs as pafs
import structlog

from pool.store.location import open_root
from pool.store.private import fsync_dir, open_private, private_dir

NAME: Final = "dead_letters.jsonl"
FOLDER: Final = "dead_letters"  # on an object store: one object per append

log = structlog.get_logger(__name__)


class DeadLetterTable:
    def __init__(self, root: str | Path, filesystem: pafs.FileSystem | None = None) -> None:
        """`root`: the store's path or URI (`pool.store.location.open_root`)."""
        self.io, base = open_root(root, filesystem)
        self.path = Path(base) / NAME  # the local table
        self.folder: PurePath = base / FOLDER  # an object store's

    def append(self, rows: list[dict[str, Any]]) -> bool:
        """Append `rows` durably; False (and an event) when the disk refused them."""
        if not rows:
            return True
        if not self.io.is_local:
            return self._put(rows)
        try:
            private_dir(self.path.parent)
            new = not self.path.exists()
            with open_private(self.path, "ab") as fh:
                if not new and _torn(fh.name):  # a killed writer's partial line: start afresh
                    fh.write(b"\n")
                fh.write(_lines(rows))
                fh.flush()
                os.fsync(fh.fileno())
            if new:
                fsync_dir(self.path.parent)
        except OSError as exc:
            log.warning("dead_letters.write_failed", path=str(self.path), rows=len(rows),
                        error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    def _put(self, rows: list[dict[str, Any]]) -> bool:
        name = f"{time.time_ns():020d}-{os.getpid()}.jsonl"
        try:
            self.io.make_dir(self.folder)
            self.io.put(self.folder / name, _lines(rows))
        except OSError as exc:
            log.warning("dead_letters.write_failed", path=str(self.folder / name), rows=len(rows),
                        error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    def read(self) -> list[dict[str, Any]]:
        """Every row in order; [] when there is no table (yet)."""
        try:
            if self.io.is_local:
                data = self.path.read_bytes()
            else:
                data = b"".join(self.io.get(self.folder / n) for n in self.io.names(self.folder))
        except FileNotFoundError:
            return []
        except OSError as exc:  # the monitor starts without them rather than not at all
            log.warning("dead_letters.read_failed", path=str(self.path),
                        error=f"{type(exc).__name__}: {exc}")
            return []
        *lines, _ = data.split(b"\n")  # the last piece: b"", or a line torn by a killed writer
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            elif line:  # a torn line a later append wrote past: skipped, said once
                log.warning("dead_letters.bad_line", path=str(self.path), line=number)
        return rows


def _torn(path: str) -> bool:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


def _lines(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r, default=str).encode() + b"\n" for r in rows)
