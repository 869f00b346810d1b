"""`selfheal status` shows DEGRADED and RECOVERING agents while their batches run.

Every task has a permanent fault, and a task gets two attempts: an agent enters RECOVERING on
its first attempt's fault and DEGRADED when the second fails the task. The chaos hook holds one
agent's Host right after the agent enters RECOVERING and the other's right after DEGRADED
(`chaos_inject`, `hold/<agent_id>`), in the middle of their batches, so the test sees both states
for as long as it polls; it then lets them go, and the run ends with every task answered.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chaos_harness import Run, settings
from chaos_inject import hold_dir
from click.testing import CliRunner

from pool.driver.runs import split_namespace
from pool.driver.synthetic import synthetic_tasks
from pool.ops.cli import main

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

ONLY_PERMANENT = {"garbage": 0.0, "truncation": 0.0, "timeout": 0.0, "oom": 0.0, "crash": 0.0,
                  "permanent": 1.0}
HOLD = {"agent-000000": "recovering", "agent-000001": "degraded"}


def _status(namespace: str) -> dict:
    """What `selfheal status --json` says of the run's pool, as a user runs it."""
    prefix, run_id = split_namespace(namespace)
    got = CliRunner().invoke(main, ["status", "--json", "--namespace", prefix, "--run", run_id])
    assert got.exit_code == 0, (got.output, got.exception)
    return json.loads(got.output)  # type: ignore[no-any-return]


def test_status_shows_degraded_and_recovering_agents_during_a_run_with_faults(
    chaos_ray: Path, tmp_path: Path
) -> None:
    cfg = settings(engine={"faults": ONLY_PERMANENT}, recovery={"max_attempts": 2})
    run = Run(tmp_path, n=4, agents=2, cfg=cfg, seed=4)
    assert {t.agent_id for t in synthetic_tasks(4, agents=2, seed=4)} == set(HOLD), "both have work"
    holds = hold_dir()
    assert holds is not None
    holds.mkdir(exist_ok=True)
    for agent_id, state in HOLD.items():
        (holds / agent_id).write_text(state)
    try:
        run.start()
        run.wait_for(lambda: all((holds / f"{a}.held").exists() for a in HOLD), timeout_s=300,
                     what="both Hosts held, mid-batch, in the states the test asked for")
        seen: dict = {}

        def both_shown() -> bool:
            seen.update(_status(run.namespace)["by_state"])
            return seen.get("recovering", 0) >= 1 and seen.get("degraded", 0) >= 1

        try:
            run.wait_for(both_shown, timeout_s=60, what="status to show RECOVERING and DEGRADED")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its last counts: {seen}") from None
    finally:
        for agent_id in HOLD:
            (holds / agent_id).unlink(missing_ok=True)
    run.join()
    assert run.statuses() == {"failed": 4}, "every task answered once held agents were let go"
