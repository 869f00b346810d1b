"""The agent table (registered agents as Parquet rows in the store): round trips, restarts,
crashes mid-append, a corrupt file, compaction."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agents.errors import StorageError
from pool.store import agent_table
from pool.store.agent_table import AgentTable

ROWS = [("a0", 0, ""), ("a1", 9, '{"persona": 1}'), ("a2", 5, "")]


def _dead_pid() -> int:
    proc = subprocess.run(["true"], check=True)
    del proc
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_rows_read_back_by_a_new_table_in_order_first_row_wins(tmp_path: Path) -> None:
    AgentTable(tmp_path).append(ROWS)
    AgentTable(tmp_path).append([("a3", 1, ""), ("a1", 2, "changed")])
    AgentTable(tmp_path).append([])  # nothing to commit: no file
    again = AgentTable(tmp_path)  # a restarted manager
    assert list(again.read()) == [*ROWS, ("a3", 1, "")]
    assert len(again.files()) == 2


def test_an_empty_store_has_no_agents(tmp_path: Path) -> None:
    assert list(AgentTable(tmp_path / "missing").read()) == []


def test_a_crash_mid_append_leaves_a_temp_that_is_never_read_and_later_removed(
    tmp_path: Path,
) -> None:
    table = AgentTable(tmp_path)
    table.append(ROWS[:1])
    name = f"agents-{10**19}-1.parquet.{_dead_pid()}.tmp"
    torn = table.folder / name
    torn.write_bytes(b"PAR1 half a file")  # what a SIGKILL during the write leaves
    assert list(table.read()) == ROWS[:1]
    table.append(ROWS[1:2])
    assert not torn.exists(), "its writer is gone: removed by the next append"
    assert list(table.read()) == ROWS[:2]


def test_a_temp_of_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    table = AgentTable(tmp_path)
    table.append(ROWS[:1])
    busy = table.folder / f"agents-{10**19}-1.parquet.{os.getpid()}.tmp"
    busy.write_bytes(b"being written")
    table.append(ROWS[1:2])
    assert busy.exists()


def test_a_failed_write_commits_nothing_and_says_it_is_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = AgentTable(tmp_path)
    table.append(ROWS[:1])

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(StorageError, match="No space left"):
        table.append(ROWS[1:])
    monkeypatch.undo()
    assert list(table.read()) == ROWS[:1]
    assert [p.name for p in table.folder.iterdir() if p.is_file()] == [table.files()[0].name]


def test_a_corrupt_file_is_set_aside_and_the_rest_is_read(tmp_path: Path) -> None:
    table = AgentTable(tmp_path)
    table.append(ROWS[:1])
    table.append(ROWS[1:])
    bad = table.files()[0]
    bad.write_bytes(bad.read_bytes()[:40])  # a disk that lied
    with capture_logs() as logs:
        assert list(table.read()) == ROWS[1:]
    assert [e["event"] for e in logs] == ["agent_table.file_quarantined"]
    assert (table.folder / "quarantine" / bad.name).exists() and len(table.files()) == 1


def test_many_files_are_compacted_into_one_with_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_table, "COMPACT_AT", 3)
    table = AgentTable(tmp_path)
    for i in range(3):
        table.append([(f"a{i}", i, "")])
    assert not table.compact()
    table.append([("a0", 7, "later"), ("a3", 3, "")])
    want = list(table.read())
    assert table.compact()
    assert len(table.files()) == 1 and list(table.read()) == want


def test_an_agent_without_a_checkpoint_binds_from_its_spec_until_it_has_one(tmp_path: Path) -> None:
    from agents.codec import decode
    from agents.models import AgentRecord, AgentSpec
    from pool.control.registry import Registry
    from pool.store.agent_table import committed_or_initial, initial_bytes
    from pool.store.checkpoint import CheckpointStore

    store, reg = CheckpointStore(tmp_path), Registry()
    spec = AgentSpec(agent_id="lazy", priority=8, system_prompt="Terse.")
    reg.add_rows(reg.new_rows([spec]))
    first = initial_bytes(store, reg, "lazy")
    assert first is not None and decode(first) == AgentRecord(spec=spec)
    assert committed_or_initial(store, reg, "lazy") == AgentRecord(spec=spec)
    assert not store.exists("lazy"), "nothing written by looking"
    store.write(AgentRecord(spec=spec, tasks_done=3), 1)  # its first commit
    assert initial_bytes(store, reg, "lazy") is None
    assert committed_or_initial(store, reg, "lazy").tasks_done == 3


def test_load_compacts_then_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_table, "COMPACT_AT", 1)
    table = AgentTable(tmp_path)
    table.append(ROWS[:1])
    table.append(ROWS[1:])
    assert list(table.load()) == ROWS and len(table.files()) == 1


def test_an_agent_bound_from_its_row_gets_its_first_checkpoint_at_its_first_park(
    tmp_path: Path,
) -> None:
    """Parked before it ever ran (shed for memory, a pause): the park commits, so a hot copy is
    always backed by a durable checkpoint (the hot tier can be lost with its owner)."""
    from agents.codec import decode
    from agents.config import load_settings
    from agents.engines.scripted import ScriptedEngine
    from agents.models import AgentSpec
    from agents.state import AgentState
    from pool.control.registry import Registry
    from pool.runtime.host import HostRuntime
    from pool.store.agent_table import initial_bytes
    from pool.store.checkpoint import CheckpointStore
    from recovery.monitor import Monitor

    settings = load_settings(overrides={"engine": {"kind": "scripted"}})
    store, reg = CheckpointStore(tmp_path), Registry()
    reg.add_rows(reg.new_rows([AgentSpec(agent_id="lazy")]))
    monitor = Monitor(settings.health, settings.recovery, clock=lambda: 0.0)
    host = HostRuntime("h0", settings, ScriptedEngine(settings.engine), store, monitor.assess,
                       sleep=lambda s: None)
    host.bind("lazy", initial_bytes(store, reg, "lazy"), epoch=1)
    hot = host.park()
    record, entry = store.read("lazy")
    assert decode(hot) == record and record.state is AgentState.DORMANT and entry.epoch == 1
    host.bind("lazy", hot, epoch=2)
    host.park()  # nothing changed since: no second version
    assert store.latest("lazy").version == 1  # type: ignore[union-attr]
