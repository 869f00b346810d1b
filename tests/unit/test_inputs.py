"""Bad task lines are rejected one by one with a one-line reason; the rest run."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agents.errors import UsageError
from agents.models import MAX_PROMPT_CHARS, TaskResult, TaskStatus
from pool.driver.inputs import load_agents, load_tasks
from pool.store.journal import ResultJournal

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
    ledger = ResultJournal(path)
    rec = TaskResult(task_id="t1", agent_id="a", status=TaskStatus.SUCCEEDED)
    assert ledger.append([rec, rec]) == [rec]
    ledger.close()
    with open(path, "ab") as fh:
        fh.write(b'{"task_id": "t2", "agent_')  # the driver died mid-write
    again = ResultJournal(path)
    assert list(again.records) == ["t1"]
    assert again.append([rec]) == []
    again.append([rec.model_copy(update={"task_id": "t2"})])
    again.close()
    assert [json.loads(line)["task_id"] for line in path.read_text().splitlines()] == ["t1", "t2"]


def test_summary_reports_the_prefix_cache_hit_rate_of_vllm_engines() -> None:
    from pool.driver.summary import summarise

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


def _ledger_round_trip(tmp_path: Path, records: list[TaskResult]) -> list[str]:
    """What the ledger keeps of `records` after a restart (the path every rejected row takes)."""
    ledger = ResultJournal(tmp_path / "ledger.jsonl")
    ledger.append(records)
    ledger.close()
    return list(ResultJournal(tmp_path / "ledger.jsonl").records)


def test_lines_that_crashed_the_loader_become_rejected_rows(tmp_path: Path) -> None:
    deep_ok_json = "[" * 200 + "]" * 200  # json.loads takes it; the monitor's checkers would not
    lines = [
        b"[" * 100_000,
        b'{"task_id": "t0", "agent_id": "a1", "prompt": "hi", "schema": ' + deep_ok_json.encode()
        + b', "kind": "json"}',
        b'{"task_id": "t2", "agent_id": "a1", "prompt": "hi", "priority": ' + b"1" * 5000 + b"}",
        b'{"task_id": "t3", "agent_id": "a1", "prompt": "hi", "deadline_s": NaN}',
        b'{"task_id": "t4", "agent_id": "a1", "prompt": "hi", "kind": "json", '
        b'"schema": {"maximum": 1e999}}',
        json.dumps(GOOD).encode(),
    ]
    tasks, rejected = load_tasks(_write(tmp_path / "t.jsonl", lines))
    assert [t.task_id for t in tasks] == ["t1"]
    expected = ["line 1: nested deeper than", "line 2: nested deeper than", "line 3: invalid JSON",
                "line 4: invalid JSON", "line 5: invalid JSON"]
    for rec, needle in zip(rejected, expected, strict=True):
        assert rec.error.startswith(needle) and "\n" not in rec.error, rec.error
    assert len(_ledger_round_trip(tmp_path, rejected)) == len(rejected)


def test_lone_surrogates_never_reach_the_ledger(tmp_path: Path) -> None:
    lines = [
        rb'{"task_id": "\ud800", "agent_id": "a1", "prompt": "hi", "colour": 1}',
        rb'{"task_id": "t2\udc00", "agent_id": "a1", "prompt": "hi"}',
        rb'{"task_id": "t3", "agent_id": "a1\ud800", "prompt": "hi"}',
        rb'{"task_id": "t4", "agent_id": "a1", "prompt": "x\ud800y"}',
        rb'{"task_id": "t5", "agent_id": "a1", "prompt": "hi", "\udfff": 1}',
        rb'{"task_id": "t6", "agent_id": "a1", "prompt": "a pair \ud83d\ude00 is fine"}',
    ]
    tasks, rejected = load_tasks(_write(tmp_path / "t.jsonl", lines))
    assert [t.task_id for t in tasks] == ["t6"]
    assert len(rejected) == 5
    assert all("lone surrogate" in r.error or "colour" in r.error for r in rejected)
    for r in rejected:
        r.model_dump_json()  # what the ledger writes
    kept = _ledger_round_trip(tmp_path, rejected)
    assert len(kept) == 5 and "t4" in kept  # a clean id is kept; a bad one becomes line-N


@pytest.mark.parametrize("agent_id", [".", ".."])
def test_dot_agent_ids_are_rejected_before_the_store_sees_them(tmp_path: Path, agent_id: str) -> None:
    lines = [json.dumps({**GOOD, "agent_id": agent_id}).encode(),
             json.dumps({**GOOD, "task_id": "t2", "agent_id": "a.b..c"}).encode()]
    tasks, rejected = load_tasks(_write(tmp_path / "t.jsonl", lines))
    assert [t.agent_id for t in tasks] == ["a.b..c"]
    assert len(rejected) == 1 and rejected[0].error.startswith("line 1: agent_id:")
    with pytest.raises(UsageError, match="line 1: agent_id"):
        load_agents(_write(tmp_path / "a.jsonl", [json.dumps({"agent_id": agent_id}).encode()]))


def test_an_over_long_line_is_rejected_without_being_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tracemalloc

    from agents.models import MAX_TASK_BYTES
    from pool.driver import inputs

    decoded: list[int] = []
    real_loads = json.loads
    monkeypatch.setattr(inputs.json, "loads", lambda s, **kw: decoded.append(len(s)) or real_loads(s, **kw))
    at_cap = b'{"task_id": "t3", "agent_id": "a1", "prompt": "'
    at_cap += b"x" * (MAX_TASK_BYTES - len(at_cap) - 2) + b'"}'
    assert len(at_cap) == MAX_TASK_BYTES
    lines = [json.dumps(GOOD).encode(),
             b'{"task_id": "t2", "agent_id": "a1", "prompt": "' + b"x" * (20 * MAX_TASK_BYTES) + b'"}',
             at_cap,
             json.dumps({**GOOD, "task_id": "t4"}).encode()]
    path = _write(tmp_path / "t.jsonl", lines)
    tracemalloc.start()
    try:
        tasks, rejected = load_tasks(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [t.task_id for t in tasks] == ["t1", "t4"]
    assert [r.error for r in rejected][0] == f"line 2: over {MAX_TASK_BYTES} bytes"
    assert "prompt: String should have at most" in rejected[1].error  # at the cap: decoded
    assert max(decoded) <= MAX_TASK_BYTES + 1  # the longest line decoded: at the cap, and its newline
    assert peak < 6 * MAX_TASK_BYTES, peak  # the 20 MiB line is never held whole


PARQUET_PROBE = """
import json, sys, tracemalloc
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from pool.driver.inputs import load_tasks
pq.read_table = None  # the loader must stream, never read the table whole
tracemalloc.start()
tasks, rejected = load_tasks(Path(sys.argv[1]))
print(json.dumps({"tasks": [t.task_id for t in tasks], "errors": [r.error for r in rejected],
                  "python_peak": tracemalloc.get_traced_memory()[1],
                  "arrow_peak": pa.default_memory_pool().max_memory()}))
"""


def test_parquet_is_streamed_and_a_row_over_the_cap_is_rejected(tmp_path: Path) -> None:
    import subprocess
    import sys

    from agents.models import MAX_TASK_BYTES

    big = "y" * (MAX_TASK_BYTES + 1)  # dictionary-encoded: stored once per row group
    rows = [{**GOOD, "task_id": f"t{i}", "prompt": big if 0 < i <= 80 else "hi"} for i in range(85)]
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=20, use_dictionary=True)
    assert path.stat().st_size < 8 * MAX_TASK_BYTES  # far smaller than its 80 MiB of values
    # a fresh process, so that the Arrow pool's peak is this load's alone
    done = subprocess.run([sys.executable, "-c", PARQUET_PROBE, str(path)], capture_output=True,
                          text=True, timeout=120, check=True)
    got = json.loads(done.stdout)
    assert got["tasks"] == ["t0", "t81", "t82", "t83", "t84"]
    assert len(got["errors"]) == 80 and got["errors"][0] == f"line 2: over {MAX_TASK_BYTES} bytes"
    assert got["python_peak"] < 4 * MAX_TASK_BYTES, got  # no row over the cap became Python
    assert got["arrow_peak"] < 16 * MAX_TASK_BYTES, got  # nor did Arrow decode them all at once


def test_invalid_task_schemas_are_rejected_at_load(tmp_path: Path) -> None:
    def task(i: int, **extra: object) -> bytes:
        return json.dumps({**GOOD, "task_id": f"t{i}", "kind": "json", **extra}).encode()

    lines = [task(1, schema={"type": "object", "properties": {"a": {"type": "string"}}}),
             task(2, schema={"type": "nope"}),
             task(3, schema={"type": "string", "minLength": -1}),
             task(4, schema={"type": "string", "pattern": "("}),
             task(5),  # kind=json without a schema: the model already refuses it
             task(6, kind="label")]  # nor labels
    tasks, rejected = load_tasks(_write(tmp_path / "t.jsonl", lines))
    assert [t.task_id for t in tasks] == ["t1"]
    assert [r.task_id for r in rejected] == ["t2", "t3", "t4", "t5", "t6"]
    for r in rejected[:3]:
        assert r.error.startswith(f"line {r.task_id[1:]}: schema") and "\n" not in r.error, r.error
    assert "kind=json needs a schema" in rejected[3].error
    assert "kind=label needs labels" in rejected[4].error


def test_the_task_file_is_read_once_and_unknown_agents_keep_their_line(tmp_path: Path) -> None:
    from pool.driver.inputs import read_tasks

    lines = [json.dumps(GOOD).encode(), b"{oops",
             json.dumps({**GOOD, "task_id": "t3", "agent_id": "ghost"}).encode(), b"[1]"]
    loaded = read_tasks(_write(tmp_path / "t.jsonl", lines))
    assert [t.task_id for t in loaded.tasks] == ["t1", "t3"]
    checked = loaded.for_agents({"a1"})  # a pure pass: no second read of the file
    (tmp_path / "t.jsonl").unlink()
    assert [t.task_id for t in checked.tasks] == ["t1"]
    assert [r.error for r in checked.rejected] == [
        "line 2: invalid JSON: Expecting property name enclosed in double quotes",
        "line 3: unknown agent_id ghost", "line 4: expected a JSON object"]


def test_a_run_reads_its_task_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.config import load_settings
    from pool.driver import inputs
    from pool.driver.batch import RunOptions, run_batch

    reads: list[Path] = []
    real_rows = inputs._rows
    monkeypatch.setattr(inputs, "_rows", lambda path: reads.append(path) or real_rows(path))
    path = _write(tmp_path / "t.jsonl", [json.dumps({**GOOD, "agent_id": "ghost"}).encode(), b"[]"])
    settings = load_settings(overrides={"engine": {"kind": "scripted"}})
    # every task is rejected (an unknown agent, a bad line): nothing to run, so no Ray starts
    run_batch(RunOptions(tasks=path, out=tmp_path / "out", settings=settings, agents=1,
                         progress=False))
    assert reads == [path]
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert [r["error"] for r in rows] == ["line 1: unknown agent_id ghost",
                                          "line 2: expected a JSON object"]


def test_a_parquet_schema_that_is_not_json_is_a_rejected_row(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    schema = pa.struct([("type", pa.string()), ("const", pa.binary())])  # bytes: not JSON
    pq.write_table(pa.table({"task_id": ["t1"], "agent_id": ["a1"], "prompt": ["hi"],
                             "kind": ["json"], "schema": pa.array([{"type": "string", "const": b"x"}],
                                                                 schema)}), path)
    tasks, rejected = load_tasks(path)
    assert not tasks and rejected[0].error.startswith("line 1: schema is not JSON")
