"""The three checks that end every chaos run (Jepsen's set check, plus resources and checkpoints).

1. ledger: every accepted task id has exactly one terminal record in the durable journal
   (`ledger.jsonl`) and in `results.parquet`: lost = unexpected = duplicates = 0.
2. resources: once the pool is shut down, Ray's available CPU and GPU equal the cluster's within
   `timeout_s` (a leaked Host or a lost release would hold a GPU share forever).
3. checkpoints: every agent's newest committed checkpoint reads back and verifies (checksum and
   full Arrow validation); agents a test poisoned on purpose may be quarantined instead.
   Reading quarantines a corrupt newest version and falls back to the previous one: the check
   says so and never counts that as verified; versions quarantined earlier are listed.

Used by `tests/chaos/` and `scripts/chaos.py`. `actor_pids` finds the processes to kill.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from agents.errors import StorageError
from pool.store.checkpoint import CheckpointStore

_FALLBACK = re.compile(r"^line-\d+(~\d+)?$")  # the id of a rejected line without a free one of its own


@dataclass(frozen=True, slots=True)
class Check:
    """One check's verdict and the figures behind it."""

    name: str
    ok: bool
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Expected:
    """What the raw input file asks for, read without the system's own loader (a task the
    loader lost would otherwise be invisible): the task ids of its lines, and how many lines."""

    ids: frozenset[str]  # the first line of each task id
    lines: int  # non-blank lines (rows): each must end as exactly one record, rejected or not


def expected_ids(tasks_path: Path) -> Expected:
    if tasks_path.suffix == ".parquet":
        table = pq.read_table(tasks_path)
        raw: list[Any] = table.column("task_id").to_pylist() if "task_id" in table.column_names \
            else [None] * table.num_rows
    else:
        raw = [_raw_id(line) for line in tasks_path.read_bytes().splitlines() if line.strip()]
    return Expected(frozenset(i for i in raw if _writable(i)), len(raw))


def _writable(task_id: Any) -> bool:
    """An id a record can carry (a lone surrogate cannot be written: its line's record takes a
    fallback id)."""
    if not isinstance(task_id, str) or not task_id:
        return False
    try:
        task_id.encode()
    except UnicodeEncodeError:
        return False
    return True


def _raw_id(line: bytes) -> Any:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return row.get("task_id") if isinstance(row, dict) else None


def check_ledger(out: Path, expected: Expected) -> Check:
    """Exactly one terminal record per input line, in the journal and in results.parquet: every
    task id of the file among them, nothing else but the fallback ids of rejected lines."""
    counts, requeued, unreadable = _journal(out / "ledger.jsonl")
    figures: dict[str, Any] = {
        "tasks": expected.lines, "records": sum(counts.values()), "requeued": requeued,
        "unreadable": unreadable,
        "lost": max(len(expected.ids - counts.keys()), expected.lines - len(counts)),
        "unexpected": max(sum(1 for i in counts.keys() - expected.ids if not _FALLBACK.match(i)),
                          len(counts) - expected.lines),
        "duplicates": sum(n - 1 for n in counts.values()),
    }
    results = out / "results.parquet"
    if results.exists():
        rows = pq.read_table(results, columns=["task_id", "status"]).to_pylist()
        ids = Counter(r["task_id"] for r in rows)
        figures["results_duplicates"] = sum(n - 1 for n in ids.values())
        figures["results_lost"] = max(len(expected.ids - ids.keys()), expected.lines - len(ids))
        figures["by_status"] = dict(Counter(r["status"] for r in rows))
    bad = {k: v for k, v in figures.items()
           if k not in ("tasks", "records", "requeued", "by_status") and v}
    detail = (f"{figures['tasks']} tasks, {figures['records']} records, lost {figures['lost']}, "
              f"unexpected {figures['unexpected']}, duplicates {figures['duplicates']}")
    return Check("ledger", not bad, detail, figures)


def _journal(path: Path) -> tuple[Counter[str], int, int]:
    """Terminal records per task id (a `requeued` line sends a task back: its records so far
    no longer count), the requeued lines, and lines that are neither."""
    counts: Counter[str] = Counter()
    requeued = unreadable = 0
    for line in _complete_lines(path):
        try:
            rec = json.loads(line)
            if "requeued" in rec:
                counts.pop(rec["requeued"], None)
                requeued += 1
            else:
                counts[rec["task_id"]] += 1
        except (ValueError, TypeError, KeyError, RecursionError):
            unreadable += 1
    return counts, requeued, unreadable


def _complete_lines(path: Path) -> list[bytes]:
    if not path.exists():
        return []
    return [line for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]


def check_resources(namespace: str | None = None, timeout_s: float = 60.0) -> Check:
    """After `shutdown_pool(namespace)` (when given), CPU and GPU come back to the cluster's total."""
    import ray

    if namespace is not None:
        from pool.driver.runs import shutdown_pool

        shutdown_pool(namespace)
    started = time.monotonic()
    while True:
        total = ray.cluster_resources()  # type: ignore[no-untyped-call]
        free = ray.available_resources()  # type: ignore[no-untyped-call]
        missing = {k: total.get(k, 0) - free.get(k, 0) for k in ("CPU", "GPU")}
        ok = all(math.isclose(v, 0, abs_tol=1e-6) for v in missing.values())
        waited = time.monotonic() - started
        if ok or waited > timeout_s:
            detail = (f"back to total (CPU {total.get('CPU', 0):g}, GPU {total.get('GPU', 0):g}) "
                      f"after {waited:.1f} s" if ok else f"still held after {waited:.0f} s: {missing}")
            return Check("resources", ok, detail, {"waited_s": round(waited, 2), "held": missing})
        time.sleep(0.25)


def check_checkpoints(store_root: str | Path, quarantined_ok: Iterable[str] = ()) -> Check:
    """Every agent's newest committed checkpoint verifies as it stands (a corrupt one that the
    check itself quarantines, falling back to an older version, does not); `quarantined_ok` may
    not. Versions quarantined earlier (the pool fell back then and went on) are reported."""
    store = CheckpointStore(store_root)
    allowed = set(quarantined_ok)
    verified, bad, quarantined, fell_back, earlier = 0, {}, [], {}, {}
    for agent_id in store.agent_ids():
        problem = None
        try:
            newest = store.latest(agent_id)
            before = [n["version"] for n in store.quarantined_versions(agent_id)]
            entry = store.verify(agent_id)  # quarantines a corrupt newest version, falls back
            if newest is not None and entry.version != newest.version:
                fell_back[agent_id] = entry.version
                problem = (f"newest version {newest.version} corrupt (quarantined: "
                           f"{_reason(store, agent_id, newest.version)}); fell back to version "
                           f"{entry.version}")
            elif before:
                earlier[agent_id] = before
        except StorageError as exc:
            problem = str(exc)[:200]
        if problem is None:
            verified += 1
        elif agent_id in allowed:
            quarantined.append(agent_id)
        else:
            bad[agent_id] = problem
    detail = f"{verified} verified, {len(quarantined)} quarantined as expected, {len(bad)} bad"
    if bad:
        detail += ": " + "; ".join(f"agent {a}: {why}" for a, why in list(bad.items())[:3])
    if earlier:
        detail += (f"; {len(earlier)} with versions quarantined earlier (" + ", ".join(
            f"{a}: {v}" for a, v in list(earlier.items())[:3]) + ")")
    return Check("checkpoints", not bad and verified > 0, detail,
                 {"verified": verified, "quarantined": quarantined, "bad": bad,
                  "fell_back": fell_back, "quarantined_earlier": earlier})


def _reason(store: CheckpointStore, agent_id: str, version: int) -> str:
    notes = [n for n in store.quarantined_versions(agent_id) if n["version"] == version]
    return str(notes[-1].get("reason", "?"))[:120] if notes else "?"


def run_checks(out: Path, tasks_path: Path, store_root: str | Path, namespace: str | None,
               quarantined_ok: Iterable[str] = ()) -> list[Check]:
    """The three checks, in order; pass `namespace` to shut the pool down first."""
    return [check_ledger(out, expected_ids(tasks_path)),
            check_resources(namespace),
            check_checkpoints(store_root, quarantined_ok)]


def actor_pids(prefix: str = "") -> dict[str, int]:
    """Name -> pid of the live named actors of the connected cluster (no dashboard needed)."""
    from ray._private import state

    out = {}
    for info in state.actors().values():
        if info["State"] == "ALIVE" and info["Name"].startswith(prefix) and info["Name"] and info["Pid"]:
            out[info["Name"]] = int(info["Pid"])
    return out
