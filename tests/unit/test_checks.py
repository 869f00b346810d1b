"""The chaos checks can fail: the ledger check reads the raw input file, not the loader."""

import json
from pathlib import Path

from pool.ops.checks import check_ledger, expected_ids


def _files(tmp_path: Path, records: list[str]) -> tuple[Path, Path]:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"task_id": "a", "agent_id": "x", "prompt": "p"}\n'
                     "not json at all\n\n"
                     '{"task_id": "b", "agent_id": "x", "prompt": "p"}\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "ledger.jsonl").write_text("".join(json.dumps({"task_id": r}) + "\n" for r in records))
    return tasks, out


def test_every_line_accounted_for_passes(tmp_path: Path) -> None:
    tasks, out = _files(tmp_path, ["a", "line-2", "b"])
    check = check_ledger(out, expected_ids(tasks))
    assert check.ok, check.line()
    assert check.figures["tasks"] == 3


def test_a_task_the_loader_never_saw_is_lost(tmp_path: Path) -> None:
    """A loader that dropped task b (and so never expected it) is caught."""
    tasks, out = _files(tmp_path, ["a", "line-2"])
    check = check_ledger(out, expected_ids(tasks))
    assert not check.ok and check.figures["lost"] == 1


def test_a_rejected_lines_missing_record_is_lost(tmp_path: Path) -> None:
    tasks, out = _files(tmp_path, ["a", "b"])
    check = check_ledger(out, expected_ids(tasks))
    assert not check.ok and check.figures["lost"] == 1


def test_a_record_of_no_line_is_unexpected(tmp_path: Path) -> None:
    tasks, out = _files(tmp_path, ["a", "line-2", "b", "zzz"])
    check = check_ledger(out, expected_ids(tasks))
    assert not check.ok and check.figures["unexpected"] == 1


def test_a_line_whose_id_cannot_be_written_is_expected_under_a_fallback_id(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"task_id": "a", "agent_id": "x", "prompt": "p"}\n'
                     '{"task_id": "\\ud800", "agent_id": "x", "prompt": "p", "colour": 1}\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "ledger.jsonl").write_text('{"task_id": "a"}\n{"task_id": "line-2"}\n')
    check = check_ledger(out, expected_ids(tasks))
    assert check.ok, check.line()
