"""`selfheal retry --out` end to end: a run leaves FAILED agents and failed tasks; retry releases
them and requeues the tasks; the next run with the same `--out` runs exactly those again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.config import load_settings
from pool.driver.batch import RunOptions, run_batch
from pool.driver.synthetic import synthetic_tasks, write_tasks
from pool.ops.checks import check_ledger, expected_ids
from pool.ops.cli import main
from pool.store.journal import ResultJournal

pytestmark = pytest.mark.integration

AGENTS = 8


def _settings(faults: dict[str, float]) -> object:
    return load_settings(overrides={
        "engine": {"kind": "scripted", "faults": faults},
        "pool": {"slots_per_gpu": 3, "batch_per_agent": 1},
        "recovery": {"intensity": 1},  # a few permanent faults in a row: the agent goes FAILED
    })


def test_retry_out_requeues_failed_tasks_and_the_next_run_runs_them(
    local_ray: None, tmp_path: Path
) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(40, agents=AGENTS, seed=5))
    out = tmp_path / "out"
    faults = {"oom": 0.2, "permanent": 0.4, "garbage": 0.1, "crash": 0.1}  # as test_ops: FAILED agents
    first = run_batch(RunOptions(tasks=tasks, out=out, agents=AGENTS, progress=False,
                                 settings=_settings(faults)))  # type: ignore[arg-type]
    ledger = ResultJournal(out / "ledger.jsonl")
    failed = {t: r.agent_id for t, r in ledger.records.items() if r.status.value == "failed"}
    ledger.close()
    assert first["failed"] and failed, "the fault mix leaves failed tasks"

    got = CliRunner().invoke(main, ["retry", "--all", "--out", str(out)])
    assert got.exit_code == 0, got.output
    assert "released to DORMANT" in got.output

    ledger = ResultJournal(out / "ledger.jsonl")
    requeued = set(failed) - set(ledger.records)
    ledger.close()
    assert requeued, "the FAILED agents' failed tasks are requeued"

    second = run_batch(RunOptions(tasks=tasks, out=out, agents=AGENTS, progress=False,
                                  settings=_settings({})))  # type: ignore[arg-type]
    rerun = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    after = [r for r in rerun[[i for i, r in enumerate(rerun) if "requeued" in r][-1] + 1:]]
    assert {r["task_id"] for r in after} == requeued, "the next run runs exactly those"
    assert all(r["status"] == "succeeded" for r in after)
    assert second["tasks"] == 40 and second["failed"] == first["failed"] - len(requeued)
    assert check_ledger(out, expected_ids(tasks)).ok
