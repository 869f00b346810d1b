"""The result journal: exactly one terminal record per task, durable across driver crashes.

It lives in `<out>/ledger.jsonl` (the name earlier runs wrote, kept so their `--out` still
resumes). An append-only JSONL file, flushed and fsynced after each batch of records. A record counts as
committed once its line is complete on disk. Reading keeps the first record of a task id, so a
duplicate can never reach the results. A `requeued` line (`selfheal retry --out`: a person sent
a failed task back) makes reading forget the task's earlier record, so the next run with this
`--out` runs it again and its new record counts.

Reading never gives up a committed record. A torn last line (the driver killed mid-write: no
newline, not a record) is cut and its task simply runs again. Any other line that is not a record
(a disk error, a hand edit) is set aside, whole, in `ledger.quarantine.jsonl` beside the ledger
with its line number and the reason, before the ledger is rewritten without it; every record
before and after it stays committed. `quarantined` and `notice` say what was set aside.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.models import TaskResult, TaskStatus
from pool.store.location import resolve
from pool.store.private import fsync_dir, open_private, write_private

log = structlog.get_logger(__name__)


class Requeued(BaseModel):
    """A ledger line that sends a task back: its earlier terminal record no longer counts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requeued: str = Field(description="Id of the task the next run runs again.")
    agent_id: str = Field(description="The task's agent.")
    reason: str = Field("", description="Why, for a person reading the ledger.")
    ts: float = Field(description="When (Unix time).")


class ResultJournal:
    """The terminal `TaskResult` of each task of one `--out`, by task id."""

    def __init__(self, path: str | Path) -> None:
        """`path`: the ledger in `--out`, a local path or file:// URI: its appends and the
        `--out` lock need POSIX, so an object store is refused in one line (an object-store
        `--out` is a local copy the driver mirrors: `pool.store.mirror`)."""
        self.path = path = resolve(path).local_path("--out")
        self.records: dict[str, TaskResult] = {}
        self.quarantined = 0  # bad lines this load set aside
        self.notice: str | None = None  # a line for the driver to print when lines were set aside
        if path.exists():
            self._load()
        self._fh = open_private(path, "ab")  # held open for the run

    @property
    def quarantine_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".quarantine.jsonl")

    def _load(self) -> None:
        data = self.path.read_bytes()
        *lines, tail = data.split(b"\n")  # `tail` is b"" when the last line is complete
        good: list[bytes] = []
        bad: list[dict[str, Any]] = []
        for number, line in enumerate(lines, 1):
            try:
                self._fold(_parse(line))
            except ValueError as exc:
                bad.append(_bad_line(number, line, exc))
                continue
            good.append(line + b"\n")
        if tail:
            try:  # killed just before the newline: the record is whole, keep it
                self._fold(_parse(tail))
                good.append(tail + b"\n")
            except ValueError:
                log.info("ledger.torn_tail_cut", path=str(self.path), bytes=len(tail))
        if bad:
            self._set_aside(bad)
        if bad or tail:  # new lines must start clean, and bad ones not be read again
            write_private(self.path, b"".join(good))

    def _fold(self, rec: TaskResult | Requeued) -> None:
        if isinstance(rec, Requeued):
            self.records.pop(rec.requeued, None)
        else:
            self.records.setdefault(rec.task_id, rec)

    def _set_aside(self, bad: list[dict[str, Any]]) -> None:
        """Append the bad lines to the quarantine file, durably, before the ledger loses them."""
        new = not self.quarantine_path.exists()
        with open_private(self.quarantine_path, "ab") as fh:
            fh.write(b"".join(json.dumps(b).encode() + b"\n" for b in bad))
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            fsync_dir(self.path.parent)
        self.quarantined = len(bad)
        numbers = [b["line"] for b in bad]
        shown = ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")
        self.notice = (f"{self.path}: {len(bad)} bad line{'s' if len(bad) > 1 else ''} set aside in "
                       f"{self.quarantine_path.name} (line {shown}); every valid record is kept")
        log.warning("ledger.quarantined", path=str(self.path), lines=numbers[:100],
                    count=len(bad), quarantine=str(self.quarantine_path))

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.records

    def __len__(self) -> int:
        return len(self.records)

    def append(self, results: Iterable[TaskResult]) -> list[TaskResult]:
        """Commit the results not yet recorded; returns those that were new."""
        new = []
        for r in results:
            if r.task_id not in self.records:
                self.records[r.task_id] = r
                new.append(r)
        self._write([r.model_dump_json().encode() + b"\n" for r in new])
        return new

    def _write(self, lines: list[bytes]) -> None:
        if lines:
            self._fh.write(b"".join(lines))
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def failed_of(self, agent_id: str) -> list[str]:
        """Ids of the agent's tasks whose committed record is FAILED."""
        return [t for t, r in self.records.items()
                if r.agent_id == agent_id and r.status is TaskStatus.FAILED]

    def requeue(self, task_ids: Iterable[str], reason: str) -> list[str]:
        """Send recorded tasks back to the next run (durably); returns those that had a record."""
        gone = [self.records.pop(t) for t in dict.fromkeys(task_ids) if t in self.records]
        lines = [Requeued(requeued=r.task_id, agent_id=r.agent_id, reason=reason, ts=time.time())
                 for r in gone]
        self._write([line.model_dump_json().encode() + b"\n" for line in lines])
        return [r.task_id for r in gone]

    def rows(self) -> list[dict[str, Any]]:
        return [r.model_dump(mode="json") for r in self.records.values()]

    def close(self) -> None:
        self._fh.close()


def _parse(line: bytes) -> TaskResult | Requeued:
    try:
        return TaskResult.model_validate_json(line)
    except ValidationError as exc:
        if b'"requeued"' in line:
            with contextlib.suppress(ValidationError):
                return Requeued.model_validate_json(line)
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{where}: {err['msg']}" if where else err["msg"]) from None


def _bad_line(number: int, line: bytes, exc: ValueError) -> dict[str, Any]:
    # surrogateescape: bytes that are not UTF-8 survive the round trip through JSON
    return {"line": number, "reason": str(exc)[:300], "ts": time.time(),
            "text": line.decode("utf-8", "surrogateescape")}


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open_private(path, "a") as fh:
        for rec in records:
            fh.write(json.dumps(rec, default=str) + "\n")
