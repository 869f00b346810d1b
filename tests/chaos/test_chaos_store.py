"""Chaos on what a run committed: a corrupt ledger line and a corrupt manifest between two runs
over the same `--out`. Nothing committed is lost, and only what was lost runs again."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from chaos_harness import Run, assert_checks, settings

from pool.driver.batch import run_batch
from pool.ops.checks import check_checkpoints, check_resources
from pool.store.checkpoint import CheckpointStore
from pool.store.manifest import MANIFEST

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def test_a_corrupt_ledger_line_costs_only_its_own_task(chaos_ray: Path, tmp_path: Path) -> None:
    run = Run(tmp_path, 120, 10, settings(), seed=41).start()
    run.join()
    ledger = run.out / "ledger.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    victim = json.loads(lines[60])["task_id"]
    lines[60] = b'{"task_id": "' + victim.encode() + b'", "status": \x00garbage}\n'  # a disk error
    ledger.write_bytes(b"".join(lines))

    summary = run_batch(run.opts)  # the same tasks over the same --out: the run resumes
    assert summary["tasks"] == run.n
    kept = [json.loads(line)["task_id"] for line in ledger.read_text().splitlines()]
    assert len(kept) == len(set(kept)) == run.n  # every other record kept, the victim run again
    assert kept[-1] == victim, "only the corrupted task ran again"
    quarantined = (run.out / "ledger.quarantine.jsonl").read_text().splitlines()
    assert len(quarantined) == 1 and json.loads(quarantined[0])["line"] == 61
    assert_checks(run)


def test_a_corrupt_manifest_is_rebuilt_and_the_agent_goes_on(chaos_ray: Path, tmp_path: Path) -> None:
    run = Run(tmp_path, 120, 10, settings(), seed=42).start()
    run.join()
    agent = "agent-000003"
    record, entry = CheckpointStore(run.store_root()).read(agent)
    manifest = next(run.store_root().rglob(f"{agent}/{MANIFEST}"))
    manifest.write_bytes(b"\x00not a manifest")

    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps({"task_id": f"m{i}", "agent_id": agent, "kind": "answer",
                                        "prompt": f"What is {i} plus 1?"}) + "\n" for i in range(5)))
    summary = run_batch(replace(run.opts, tasks=more))  # more work for it, same --out and store
    assert summary["tasks"] == run.n + 5  # the first run's results are all still there
    after, latest = CheckpointStore(run.store_root()).read(agent)
    assert latest.version > entry.version, "the agent committed on top of its rebuilt manifest"
    assert after.tasks_done > record.tasks_done, "its memory came from its newest version"
    checks = [check_resources(), check_checkpoints(run.store_root())]
    assert all(c.ok for c in checks), [c.line() for c in checks]
