"""The task ledger: exactly one terminal record per task, durable across driver crashes.

An append-only JSONL journal, flushed and fsynced after each batch of records. A record counts as
committed once its line is complete on disk; a torn last line (the driver killed mid-write) is
ignored on read and the task is simply run again. Reading keeps the first record of a task id, so
a duplicate can never reach the results.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agents.models import TaskResult


class TaskLedger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, TaskResult] = {}
        if path.exists():
            self._load()
        self._fh = open(path, "ab")  # noqa: SIM115 - held open for the run

    def _load(self) -> None:
        with open(self.path, "rb") as fh:
            data = fh.read()
        good_end = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn tail
            try:
                rec = TaskResult.model_validate_json(line)
            except ValidationError:
                break
            good_end += len(line)
            self.records.setdefault(rec.task_id, rec)
        if good_end < len(data):  # cut the torn tail so new lines start clean
            with open(self.path, "r+b") as fh:
                fh.truncate(good_end)

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
        if not new:
            return []
        self._fh.write(b"".join(r.model_dump_json().encode() + b"\n" for r in new))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return new

    def rows(self) -> list[dict[str, Any]]:
        return [r.model_dump(mode="json") for r in self.records.values()]

    def close(self) -> None:
        self._fh.close()


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "a") as fh:
        for rec in records:
            fh.write(json.dumps(rec, default=str) + "\n")
