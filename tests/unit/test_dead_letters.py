"""Dead letters and failed agents outlive the monitor: a table in the store, read back on start."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from structlog.testing import capture_logs

from agents.config import HealthConfig, RecoveryConfig
from agents.errors import FaultClass
from agents.models import TaskKind
from pool.store.deadletters import DeadLetterTable
from recovery.monitor import Monitor
from recovery.types import Action, Signals


def _sig(fault: FaultClass = FaultClass.NONE) -> Signals:
    return Signals(text="", finish_reason="stop", kind=TaskKind.FREE, elapsed_s=0.1, deadline_s=10,
                   memory_headroom=0.5, fault=fault)


def _monitor(table: DeadLetterTable) -> Monitor:
    m = Monitor(HealthConfig(), RecoveryConfig(max_attempts=2, backoff_base_s=0),
                clock=lambda: 0.0, journal=table.append)
    m.replay(table.read())
    return m


def _dead_letter(m: Monitor, agent_id: str, task_id: str) -> None:
    actions = [m.assess(agent_id, [(task_id, f"p-{task_id}", n, _sig(FaultClass.TIMEOUT))])[0][1].action
               for n in range(2)]
    assert actions == [Action.RETRY, Action.FAIL_TASK]


def test_dead_letters_and_failed_agents_survive_a_monitor_restart(tmp_path: Path) -> None:
    table = DeadLetterTable(tmp_path / "ckpt")
    first = _monitor(table)
    _dead_letter(first, "a1", "t1")
    _dead_letter(first, "a2", "t2")
    first.mark_failed("a1", "its Host died 3 times")
    again = _monitor(table)  # a restarted monitor (or the next run's) reads the table back
    assert again.dead_letters == first.dead_letters and len(again.dead_letters) == 2
    assert again.failed == {"a1": "its Host died 3 times"}
    assert again.release("a1") is True
    third = _monitor(table)  # a release is kept too: the agent's letters and failure are gone
    assert [d["task_id"] for d in third.dead_letters] == ["t2"] and third.failed == {}


def test_the_table_is_private_and_skips_a_torn_line(tmp_path: Path) -> None:
    table = DeadLetterTable(tmp_path / "ckpt")
    assert table.read() == []
    table.append([{"kind": "dead_letter", "agent_id": "a", "task_id": "t"}])
    assert stat.S_IMODE(os.stat(table.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(table.path.parent).st_mode) == 0o700
    with open(table.path, "ab") as fh:
        fh.write(b'{"kind": "dead_le')  # a monitor killed mid-write
    with capture_logs() as logs:
        assert [r["task_id"] for r in table.read()] == ["t"]
    assert not logs, "a torn last line is expected after a kill: nothing to report"
    table.append([{"kind": "released", "agent_id": "a"}])  # starts on a line of its own
    assert [r["kind"] for r in table.read()] == ["dead_letter", "released"]
    assert json.loads(table.path.read_bytes().splitlines()[-1])["kind"] == "released"


def test_a_failed_write_is_reported_and_the_monitor_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    root.write_text("a file where the folder should be")
    table = DeadLetterTable(root)
    with capture_logs() as logs:
        m = _monitor(table)
        _dead_letter(m, "a1", "t1")
    assert len(m.dead_letters) == 1
    assert any(e["event"] == "dead_letters.write_failed" for e in logs)
