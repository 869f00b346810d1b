"""The batch job end to end on a local Ray with the scripted engine."""

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from agents.config import load_settings
from pool.driver.batch import RunOptions, run_batch
from pool.driver.synthetic import synthetic_tasks, write_tasks

pytestmark = pytest.mark.integration


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def test_thousands_of_agents_stay_within_budget_and_slots(local_ray: None, tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(2000, agents=5000, seed=3))
    settings = load_settings(overrides={"engine": {"kind": "scripted"}, "pool": {"num_gpus": 1}})
    out = tmp_path / "out"
    summary = run_batch(RunOptions(tasks=tasks, out=out, settings=settings, agents=5000, progress=False))

    table = pq.read_table(out / "results.parquet").to_pylist()
    ids = [r["task_id"] for r in table]
    assert len(ids) == 2000 and len(set(ids)) == 2000, "exactly one row per task"
    statuses = Counter(r["status"] for r in table)
    assert statuses["succeeded"] >= 1900, statuses  # the default fault mix heals

    residency = [e for e in _events(out) if e["event"] == "pool.residency"]
    assert residency, "the pool reports its residency"
    for e in residency:
        assert e["residents"] <= e["slots"] == settings.pool.slots_per_gpu
        assert e["used_mib"] <= e["limit_mib"] == settings.pool.budget_mib * settings.pool.watermark
    assert max(e["residents"] for e in residency) == settings.pool.slots_per_gpu
    assert summary["activations"] >= 1000


def test_rerun_skips_committed_tasks_and_rejects_bad_lines(local_ray: None, tmp_path: Path) -> None:
    good = synthetic_tasks(40, agents=10, seed=1)
    path = write_tasks(tmp_path / "tasks.jsonl", good)
    with open(path, "a") as fh:
        fh.write('{"task_id": "bad", "agent_id": "agent-000001"}\n{oops\n')
        fh.write('{"task_id": "ghost", "agent_id": "nobody", "prompt": "hi"}\n')
    settings = load_settings(overrides={"engine": {"kind": "scripted"}})
    out = tmp_path / "out"
    first = run_batch(RunOptions(tasks=path, out=out, settings=settings, agents=10, progress=False))
    assert first["rejected"] == 3 and first["tasks"] == 43
    second = run_batch(RunOptions(tasks=path, out=out, settings=settings, agents=10, progress=False))
    assert second["tasks"] == 43
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len({r["task_id"] for r in rows}) == len(rows) == 43
    errors = {r["task_id"]: r["error"] for r in rows if r["status"] == "rejected"}
    assert "prompt: Field required" in errors["bad"] and "unknown agent_id nobody" in errors["ghost"]
