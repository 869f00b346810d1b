"""The task ledger keeps every committed record: bad lines are set aside, never the ones after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agents.models import TaskResult, TaskStatus
from pool.store.journal import ResultJournal


def _rec(task_id: str, status: TaskStatus = TaskStatus.SUCCEEDED, agent_id: str = "a") -> TaskResult:
    return TaskResult(task_id=task_id, agent_id=agent_id, status=status, output=f"out {task_id}")


def _line(task_id: str, **kw: object) -> bytes:
    return _rec(task_id, **kw).model_dump_json().encode() + b"\n"  # type: ignore[arg-type]


def _quarantine(path: Path) -> list[dict[str, object]]:
    q = path.with_name("ledger.quarantine.jsonl")
    return [json.loads(line) for line in q.read_text().splitlines()] if q.exists() else []


BAD_LINES = {
    "garbage": b"\x00\xff not json at all\n",
    "half_a_record": b'{"task_id": "tx", "agent_\n',  # a line torn and then written over
    "json_but_no_record": b'{"hello": "world"}\n',
    "bad_status": json.dumps({**json.loads(_line("tx")), "status": "maybe"}).encode() + b"\n",
    "deep_nesting": b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "bad_utf8": b'{"task_id": "\xc3\x28", "agent_id": "a", "status": "succeeded"}\n',
    "blank": b"\n",
}


@pytest.mark.parametrize("bad", sorted(BAD_LINES))
def test_a_bad_record_in_the_middle_keeps_every_later_record(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(_line("t1") + _line("t2") + BAD_LINES[bad] + _line("t3") + _line("t4"))
    with capture_logs() as logs:
        ledger = ResultJournal(path)
    assert list(ledger.records) == ["t1", "t2", "t3", "t4"], "nothing after the bad line is lost"
    assert ledger.quarantined == 1
    assert ledger.notice is not None and "1 bad line" in ledger.notice and "line 3" in ledger.notice
    [event] = [e for e in logs if e["event"] == "ledger.quarantined"]
    assert event["lines"] == [3] and event["path"] == str(path)
    [kept] = _quarantine(path)
    assert kept["line"] == 3 and kept["reason"]
    assert kept["text"].encode("utf-8", "surrogateescape") == BAD_LINES[bad].rstrip(b"\n")
    # the ledger itself now holds the valid records only, and new ones follow them cleanly
    ledger.append([_rec("t5")])
    ledger.close()
    ids = [json.loads(line)["task_id"] for line in path.read_text().splitlines()]
    assert ids == ["t1", "t2", "t3", "t4", "t5"]
    again = ResultJournal(path)
    assert again.quarantined == 0 and again.notice is None and len(_quarantine(path)) == 1
    again.close()


def test_several_bad_lines_are_each_set_aside_in_order(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b"oops\n" + _line("t1") + b"{}\n" + _line("t2") + b"]\n")
    ledger = ResultJournal(path)
    assert list(ledger.records) == ["t1", "t2"] and ledger.quarantined == 3
    assert [q["line"] for q in _quarantine(path)] == [1, 3, 5]
    ledger.close()


def test_a_torn_last_line_is_cut_not_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(_line("t1") + b"garbage\n" + _line("t2") + b'{"task_id": "t3", "ag')
    ledger = ResultJournal(path)
    assert list(ledger.records) == ["t1", "t2"] and ledger.quarantined == 1
    assert [q["line"] for q in _quarantine(path)] == [2]
    ledger.close()
    assert path.read_bytes() == _line("t1") + _line("t2")


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(_line("t1") + _line("t2").rstrip(b"\n"))  # killed just before the newline
    ledger = ResultJournal(path)
    assert list(ledger.records) == ["t1", "t2"] and ledger.quarantined == 0
    ledger.append([_rec("t3")])
    ledger.close()
    assert path.read_bytes() == _line("t1") + _line("t2") + _line("t3")


def test_the_first_record_of_a_task_wins(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(_line("t1") + _line("t1", status=TaskStatus.FAILED))
    ledger = ResultJournal(path)
    assert ledger.records["t1"].status is TaskStatus.SUCCEEDED and len(ledger) == 1
    ledger.close()


# ---- requeue: a person sends failed tasks back to the next run --------------------------------


def test_a_requeued_task_is_forgotten_and_its_rerun_committed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = ResultJournal(path)
    ledger.append([_rec("t1", TaskStatus.FAILED), _rec("t2"), _rec("t3", TaskStatus.FAILED),
                   _rec("t4", TaskStatus.FAILED, agent_id="b")])
    assert ledger.failed_of("a") == ["t1", "t3"]
    assert ledger.requeue(["t1", "t3", "t9"], reason="agent a released") == ["t1", "t3"]
    assert "t1" not in ledger and "t3" not in ledger and "t2" in ledger
    ledger.close()
    again = ResultJournal(path)  # the next run: it runs t1 and t3 again
    assert sorted(again.records) == ["t2", "t4"] and again.quarantined == 0
    again.append([_rec("t1"), _rec("t3", TaskStatus.FAILED)])
    again.close()
    last = ResultJournal(path)
    assert last.records["t1"].status is TaskStatus.SUCCEEDED
    assert last.records["t3"].status is TaskStatus.FAILED and len(last) == 4
    last.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["requeued"] for r in lines if "requeued" in r] == ["t1", "t3"]
    assert all(r["reason"] == "agent a released" for r in lines if "requeued" in r)


def test_check_ledger_counts_a_rerun_after_a_requeue_once(tmp_path: Path) -> None:
    from pool.ops.checks import Expected, check_ledger

    ledger = ResultJournal(tmp_path / "ledger.jsonl")
    ledger.append([_rec("t1", TaskStatus.FAILED), _rec("t2")])
    ledger.requeue(["t1"], reason="retry")
    ledger.append([_rec("t1")])
    ledger.close()
    check = check_ledger(tmp_path, Expected(frozenset({"t1", "t2"}), 2))
    assert check.ok and check.figures["duplicates"] == 0 and check.figures["requeued"] == 1


def test_selfheal_retry_out_releases_the_agent_and_requeues_its_failed_tasks(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from agents.models import AgentRecord, AgentSpec
    from agents.state import AgentState
    from pool.ops.cli import main
    from pool.store.checkpoint import CheckpointStore
    from pool.store.deadletters import DeadLetterTable

    out = tmp_path / "out"
    store = CheckpointStore(out / "checkpoints")
    failed = AgentRecord(spec=AgentSpec(agent_id="a"), state=AgentState.FAILED,
                         failed_reason="its Host died 3 times")
    store.write(failed, epoch=6)
    store.write(AgentRecord(spec=AgentSpec(agent_id="b")), epoch=1)
    ledger = ResultJournal(out / "ledger.jsonl")
    ledger.append([_rec("t1", TaskStatus.FAILED), _rec("t2"), _rec("t3", TaskStatus.FAILED),
                   _rec("t4", TaskStatus.FAILED, agent_id="b")])
    ledger.close()
    table = DeadLetterTable(store.root)
    table.append([{"kind": "dead_letter", "agent_id": "a", "task_id": "t1", "reason": "x"},
                  {"kind": "agent_failed", "agent_id": "a", "reason": "its Host died 3 times"}])

    got = CliRunner().invoke(main, ["retry", "a", "--out", str(out)])
    assert got.exit_code == 0, got.output
    assert "a: released to DORMANT; 2 failed tasks requeued" in got.output
    record, entry = store.read("a")
    assert record.state is AgentState.DORMANT and record.failed_reason is None
    assert entry.epoch > 6
    rerun = ResultJournal(out / "ledger.jsonl")  # what the next `selfheal run --out` skips
    assert sorted(rerun.records) == ["t2", "t4"]
    rerun.close()
    assert [r["kind"] for r in table.read()][-1] == "released"

    again = CliRunner().invoke(main, ["retry", "a", "--out", str(out)])
    assert again.exit_code == 1 and "a: not FAILED (unchanged); no failed tasks" in again.output
    everyone = CliRunner().invoke(main, ["retry", "--all", "--out", str(out)])
    assert everyone.exit_code == 0 and "no FAILED agent" in everyone.output
    missing = CliRunner().invoke(main, ["retry", "a", "--out", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no ledger.jsonl" in missing.output


def test_retry_all_out_takes_the_failed_agents_from_the_dead_letter_table(tmp_path: Path) -> None:
    """The pool marks a failure it decided itself (a Host that keeps dying) in the table only:
    the checkpoint is not FAILED, yet the agent's failed tasks are requeued."""
    from click.testing import CliRunner

    from agents.models import AgentRecord, AgentSpec
    from pool.ops.cli import main
    from pool.store.checkpoint import CheckpointStore
    from pool.store.deadletters import DeadLetterTable

    out = tmp_path / "out"
    store = CheckpointStore(out / "checkpoints")
    for agent_id in ("a", "b"):
        store.write(AgentRecord(spec=AgentSpec(agent_id=agent_id)), epoch=1)
    ledger = ResultJournal(out / "ledger.jsonl")
    ledger.append([_rec("t1", TaskStatus.FAILED), _rec("t2", TaskStatus.FAILED, agent_id="b")])
    ledger.close()
    DeadLetterTable(store.root).append([{"kind": "agent_failed", "agent_id": "a", "reason": "x"}])
    got = CliRunner().invoke(main, ["retry", "--all", "--out", str(out)])
    assert got.exit_code == 0, got.output
    assert got.output.splitlines() == [f"a: released to DORMANT; 1 failed task requeued in {out} "
                                       f"(the next `selfheal run --out {out}` runs them)"]
    again = ResultJournal(out / "ledger.jsonl")
    assert sorted(again.records) == ["t2"], "b is not FAILED: its failed task stays failed"
    again.close()
