"""pool/store stays small and has one durable write: the store's commits go through
`pool.store.private.write_private`, the same function the ledger, the agent table and the summary
use, so a fault injected there (the chaos suite's full disk) reaches every checkpoint write."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agents.errors import StorageError
from agents.models import AgentRecord, AgentSpec
from pool.store import private
from pool.store.checkpoint import CheckpointStore

STORE = Path(__file__).resolve().parents[2] / "pool" / "store"


def test_no_module_of_the_store_passes_400_lines() -> None:
    long = {p.name: n for p in STORE.glob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_a_commit_writes_through_the_one_durable_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    record = AgentRecord(spec=AgentSpec(agent_id="a"))
    store.write(record, epoch=1)

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(private, "write_all", full)
    with pytest.raises(StorageError, match="No space left on device"):
        store.write(record, epoch=1)
    with pytest.raises(StorageError, match="No space left on device"):
        store.put_meta("PAUSED", b"x")
    monkeypatch.undo()
    assert [e.version for e in store.versions("a")] == [1]


def test_write_private_reports_its_steps_in_order(tmp_path: Path) -> None:
    steps: list[str] = []
    private.write_private(tmp_path / "f", b"data", step=steps.append)
    assert steps == ["temp_written", "fsynced"]
    assert (tmp_path / "f").read_bytes() == b"data"
