"""Malformed tasks and configs end to end through `selfheal run` (a subprocess).

Task errors become `rejected` rows with a one-line reason and the rest of the batch runs; config
errors exit 2 with one line on stderr and no traceback. The line-by-line cases of the reader are
unit-tested in `tests/unit/test_inputs.py`; this is the same input through the real command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from chaos_harness import NAMESPACE

from agents.models import MAX_PROMPT_CHARS, MAX_TASK_BYTES
from pool.driver.synthetic import synthetic_tasks, write_tasks
from pool.ops.checks import run_checks

pytestmark = [pytest.mark.chaos, pytest.mark.integration]
SELFHEAL = str(Path(sys.executable).parent / "selfheal")
OK = {"agent_id": "agent-000001", "prompt": "what is 2 plus 2?", "kind": "answer", "expected": "4"}

BAD_LINES: list[tuple[bytes, str]] = [
    (b"{not json", "invalid JSON"),
    (json.dumps({"task_id": "b-missing", "agent_id": "agent-000001"}).encode(), "prompt: Field required"),
    (json.dumps({**OK, "task_id": "b-ghost", "agent_id": "ghost"}).encode(), "unknown agent_id ghost"),
    (json.dumps({**OK, "task_id": "t000000"}).encode(), "duplicate task_id t000000"),
    (json.dumps({**OK, "task_id": "b-big", "prompt": "x" * (MAX_PROMPT_CHARS + 1)}).encode(),
     "at most"),
    (b'{"task_id": "b-utf8", "agent_id": "agent-000001", "prompt": "\xff\xfe"}', "invalid UTF-8"),
    (json.dumps({**OK, "task_id": "b-extra", "colour": "red"}).encode(), "colour: Extra inputs"),
    (b"[" * 100_000, "nested deeper than 64 levels"),
    (rb'{"task_id": "\ud800", "agent_id": "agent-000001", "prompt": "hi", "colour": 1}',
     "lone surrogate"),
    (json.dumps({**OK, "task_id": "b-dot", "agent_id": ".."}).encode(), "agent id '..' is not allowed"),
    (json.dumps({**OK, "task_id": "b-schema", "kind": "json", "schema": {"type": "nope"}}).encode(),
     "schema"),
    (b'{"prompt": "' + b"x" * MAX_TASK_BYTES + b'"}', f"over {MAX_TASK_BYTES} bytes"),
]

BAD_CONFIGS: list[tuple[str, str]] = [
    ("pool:\n  colour: red\n", "pool.colour: Extra inputs are not permitted"),
    ("health:\n  weights: {coherence: 0.5, completeness: 0.5, latency: 0.5, memory: 0, "
     "consistency: 0}\n", "health weights must sum to 1"),
    ("pool: [unclosed\n", "not valid yaml"),
    ("pool:\n  budget_mib: -1\n", "pool.budget_mib"),
    ("recovery:\n  mode: sometimes\n", "recovery.mode"),
    ("pool:\n  watchdog_s: .inf\n", "pool.watchdog_s: Input should be a finite number"),
    ("recovery:\n  backoff_max_s: 1e308\n", "recovery.backoff_max_s: Input should be less than"),
]


def test_malformed_task_lines_become_rejected_rows_and_the_rest_runs(
    chaos_ray: Path, tmp_path: Path
) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(60, agents=5, seed=31))
    with open(tasks, "ab") as fh:
        fh.write(b"\n".join(line for line, _ in BAD_LINES) + b"\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"pool:\n  namespace: {NAMESPACE}\n")
    out = tmp_path / "out"
    address = ray.get_runtime_context().gcs_address
    done = subprocess.run([SELFHEAL, "run", "--engine", "scripted", "--tasks", str(tasks), "--agents", "5",
                           "--config", str(config), "--out", str(out), "--address", address,
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pq.read_table(out / "results.parquet").to_pylist()
    rejected = [r for r in rows if r["status"] == "rejected"]
    assert len(rejected) == len(BAD_LINES)
    for (_, needle), row in zip(BAD_LINES, rejected, strict=True):
        assert needle in row["error"] and "\n" not in row["error"], (needle, row["error"])
    assert sum(r["status"] == "succeeded" for r in rows) >= 55
    checks = run_checks(out, tasks, out / "checkpoints", NAMESPACE)
    assert all(c.ok for c in checks), [c.line() for c in checks]


@pytest.mark.parametrize(("text", "needle"), BAD_CONFIGS, ids=[n.split(":")[0] for _, n in BAD_CONFIGS])
def test_bad_config_exits_2_with_one_line(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(3, agents=1))
    done = subprocess.run([SELFHEAL, "run", "--engine", "scripted", "--tasks", str(tasks),
                           "--config", str(config), "--out", str(tmp_path / "out"), "--address",
                           "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out" / "ledger.jsonl").exists()
