"""Bad task lines are rejected one by one with a one-line reason; the rest run."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agents.errors import UsageError
from agents.models import MAX_PROMPT_CHARS, TaskResult, TaskStatus
from pool.inputs import load_agents, load_tasks
from pool.ledger import TaskLedger

GOOD = {"task_id": "t1", "agent_id": "a1", "prompt": "hello"}


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_each_bad_line_is_rejected_with_its_reason(tmp_path: Path) -> None:
    lines = [
        json.dumps(GOOD).encode(),
        b"{not json",
        json.dumps({"task_id": "t2", "agent_id": "a1"}).encode(),  # no prompt
        json.dumps(GOOD).encode(),  # duplicate id
        json.dumps({**GOOD, "task_id": "t3", "agent_id": "ghost"}).encode(),
        json.dumps({**GOOD, "task_id": "t4", "prompt": "x" * (MAX_PROMPT_CHARS + 1)}).encode(),
        b'{"task_id": "t5", "agent_id": "a1", "prompt": "\xff\xfe"}',
        json.dumps({**GOOD, "task_id": "t6", "colour": "red"}).encode(),
        json.dumps({**GOOD, "task_id": "t7", "kind": "label"}).encode(),
        b"[1, 2]",
    ]
    tasks, rejected = load_tasks(_write(tmp_path / "t.jsonl", lines), agents={"a1"})
    assert [t.task_id for t in tasks] == ["t1"]
    reasons = [r.error for r in rejected]
    expected = ["invalid JSON", "prompt: Field required", "duplicate task_id t1", "unknown agent_id ghost",
                "prompt: String should have at most", "invalid UTF-8", "colour: Extra inputs",
                "kind=label needs labels", "expected a JSON object"]
    for reason, needle in zip(reasons, expected, strict=True):
        assert needle in reason and "\n" not in reason
    assert all(r.status is TaskStatus.REJECTED for r in rejected)
    ids = [r.task_id for r in rejected] + ["t1"]
    assert len(ids) == len(set(ids)), "every line gets its own record id"


def test_parquet_tasks(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, {**GOOD, "task_id": "t2"}]), path)
    tasks, rejected = load_tasks(path)
    assert [t.task_id for t in tasks] == ["t1", "t2"] and not rejected


def test_missing_files_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_tasks(tmp_path / "none.jsonl")
    with pytest.raises(UsageError, match="line 1: priority"):
        load_agents(_write(tmp_path / "a.jsonl", [b'{"agent_id": "a", "priority": 12}']))


def test_ledger_survives_a_torn_line_and_never_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = TaskLedger(path)
    rec = TaskResult(task_id="t1", agent_id="a", status=TaskStatus.SUCCEEDED)
    assert ledger.append([rec, rec]) == [rec]
    ledger.close()
    with open(path, "ab") as fh:
        fh.write(b'{"task_id": "t2", "agent_')  # the driver died mid-write
    again = TaskLedger(path)
    assert list(again.records) == ["t1"]
    assert again.append([rec]) == []
    again.append([rec.model_copy(update={"task_id": "t2"})])
    again.close()
    assert [json.loads(line)["task_id"] for line in path.read_text().splitlines()] == ["t1", "t2"]


def test_summary_reports_the_prefix_cache_hit_rate_of_vllm_engines() -> None:
    from pool.summary import summarise

    events = [{"event": "engine.stats", "prompt_tokens": 300, "cached_tokens": 75},
              {"event": "engine.stats", "prompt_tokens": 100, "cached_tokens": 25}]
    assert summarise([], events, 1.0)["prefix_cache_hit_rate"] == 0.25
    assert summarise([], [], 1.0)["prefix_cache_hit_rate"] is None


def test_a_rejected_lines_fallback_id_never_shadows_a_real_task_id(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text('{oops\n'
                    '{"task_id": "line-1", "agent_id": "a", "prompt": "hi"}\n'
                    '{"task_id": "line-4", "agent_id": "a", "prompt": "hi"}\n'
                    '[1]\n'
                    '{"task_id": "line-5~1", "agent_id": "a", "prompt": "hi"}\n'
                    '"x"\n')
    tasks, rejected = load_tasks(path)
    assert [t.task_id for t in tasks] == ["line-1", "line-4", "line-5~1"]  # every valid task runs
    ids = [r.task_id for r in rejected]
    assert len(ids) == 3 and len(set(ids)) == 3 and not set(ids) & {t.task_id for t in tasks}
