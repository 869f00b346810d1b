"""`selfheal retry --out`: release FAILED agents and send their failed tasks back to the next run.

It works on a run's files, with no pool running (a finished run's pool is gone). An agent is
FAILED when the store's dead-letter table says so (the pool marks every failure there) or its
checkpoint does (a failure decided on its Host). Releasing it commits a FAILED checkpoint again
as DORMANT under an epoch above its fence and records the release in the table; each of its
FAILED task records gets a `requeued` line in `OUT/ledger.jsonl`, so the next
`selfheal run --out OUT` runs them again. The `--out` folder's lock is held meanwhile: a folder
a live driver writes is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agents.errors import UsageError
from agents.models import TaskStatus
from agents.state import AgentState
from pool.driver.runs import LOCK_NAME, check_out_folder
from pool.store.checkpoint import CheckpointStore
from pool.store.deadletters import DeadLetterTable
from pool.store.journal import ResultJournal
from recovery.monitor import fold_letters


@dataclass(frozen=True, slots=True)
class Retried:
    """What `retry` did for one agent."""

    agent_id: str
    released: bool  # its checkpoint was FAILED and is DORMANT now
    requeued: int  # failed tasks sent back to the next run
    known: bool  # the store has a checkpoint of it

    def line(self, out: Path | str) -> str:
        head = "released to DORMANT" if self.released else (
            "not FAILED (unchanged)" if self.known else "unknown agent")
        tasks = (f"{self.requeued} failed task{'s' if self.requeued > 1 else ''} requeued in "
                 f"{out} (the next `selfheal run --out {out}` runs them)" if self.requeued
                 else "no failed tasks")
        return f"{self.agent_id}: {head}; {tasks}"


def retry_offline(out: Path, store_root: str | Path, agent_ids: list[str] | None) -> list[Retried]:
    """Release `agent_ids` (None: every FAILED agent the run knows of) and requeue their
    failed tasks; see the module docstring."""
    if not (out / "ledger.jsonl").is_file():
        raise UsageError(f"{out}: no ledger.jsonl (not the --out of a run)")
    check_out_folder(out)
    store, table = CheckpointStore(store_root), DeadLetterTable(store_root)
    with _holding(out):
        ledger = ResultJournal(out / "ledger.jsonl")
        try:
            failed, _ = fold_letters(table.read())
            ids = agent_ids if agent_ids is not None else _failed_agents(store, failed, ledger)
            return [_retry_one(store, table, ledger, a, a in failed) for a in ids]
        finally:
            ledger.close()


def _retry_one(store: CheckpointStore, table: DeadLetterTable, ledger: ResultJournal,
               agent_id: str, marked: bool) -> Retried:
    known = store.exists(agent_id)
    released = (known and _release(store, agent_id)) or marked
    requeued = ledger.requeue(ledger.failed_of(agent_id), reason=f"selfheal retry {agent_id}")
    if released or requeued:
        table.append([{"kind": "released", "agent_id": agent_id, "ts": time.time(),
                       "requeued": len(requeued)}])
    return Retried(agent_id, released, len(requeued), known)


def _release(store: CheckpointStore, agent_id: str) -> bool:
    record, _ = store.read(agent_id)
    if record.state is not AgentState.FAILED:
        return False
    fixed = record.model_copy(update={"state": AgentState.DORMANT, "failed_reason": None})
    store.write(fixed, store.next_epoch(agent_id))
    return True


def _failed_agents(store: CheckpointStore, failed: dict[str, str], ledger: ResultJournal) -> list[str]:
    """The agents the table marks FAILED, and those with failed tasks whose checkpoint is FAILED
    (a run before the table; only they are read: not every agent of a large run)."""
    named = {r.agent_id for r in ledger.records.values()
             if r.status is TaskStatus.FAILED} - failed.keys()
    return sorted(failed.keys() | {a for a in named if store.exists(a) and _is_failed(store, a)})


def _is_failed(store: CheckpointStore, agent_id: str) -> bool:
    return store.read(agent_id)[0].state is AgentState.FAILED


@contextlib.contextmanager
def _holding(out: Path) -> Iterator[None]:
    """The `--out` folder's lock (`pool.driver.runs`), taken without writing a holder into it: the
    file keeps naming the last driver, whose pool the next driver may have to take down."""
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            who = os.read(fd, 4096).decode(errors="replace").strip() or "another driver"
            raise UsageError(f"{out} is in use by a live driver ({who}): retry when it ends, or "
                             f"`selfheal retry --run RUN AGENT` in its pool") from None
        yield
    finally:
        os.close(fd)
