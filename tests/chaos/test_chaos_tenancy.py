"""Two drivers at once on one Ray cluster: each run has a pool of its own (its run id's namespace),
neither sees nor kills the other's actors, both finish with every task accounted for, and once
both have ended the cluster's CPU and GPU are all free again, with no one shutting a pool down
for them (each run gives its own back).

The two runs use distinct task and agent ids, so a result or event that crossed from one run to
the other shows up as a foreign id.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from chaos_harness import NAMESPACE, Run, check_executions, settings

from pool.driver.inputs import read_tasks
from pool.driver.runs import live_runs, split_namespace
from pool.driver.synthetic import write_tasks
from pool.ops.checks import run_checks

pytestmark = [pytest.mark.chaos, pytest.mark.integration]
N, AGENTS = 160, 12


def _tagged(tmp: Path, tag: str, seed: int) -> Run:
    """A run whose task and agent ids all start with `tag`, in the namespace of run id `tag`."""
    (tmp / tag).mkdir()
    run = Run(tmp / tag, N, AGENTS, settings(engine={"step_cost_s": 0.005}), seed=seed, run_id=tag)
    tasks = [t.model_copy(update={"task_id": f"{tag}-{t.task_id}", "agent_id": f"{tag}-{t.agent_id}"})
             for t in read_tasks(run.tasks).tasks]
    write_tasks(run.tasks, tasks)
    run.opts = replace(run.opts, agents=None)  # the agents are those of the task file
    return run


def _all_events(run: Run) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run.out / "events.jsonl").read_text().splitlines()]


def _foreign(run: Run, tag: str) -> list[dict[str, Any]]:
    """Events of this run that name an agent or task that is not its own."""
    return [e for e in _all_events(run)
            if any(isinstance(e.get(k), str) and e[k] and not e[k].startswith(f"{tag}-")
                   for k in ("agent_id", "task_id"))]


def test_two_drivers_at_once_both_finish_and_give_the_cluster_back(chaos_ray: Path,
                                                                   tmp_path: Path) -> None:
    prefix, _ = split_namespace(NAMESPACE)
    runs = {"tena": _tagged(tmp_path, "tena", seed=31), "tenb": _tagged(tmp_path, "tenb", seed=32)}
    for run in runs.values():  # built (and the execution counters reset) before either starts
        run.start()
    first = runs["tena"]
    both = {r.namespace for r in runs.values()}
    # Both managers alive at once: a second driver no longer replaces the first one's pool.
    first.wait_for(lambda: both <= {r["namespace"] for r in live_runs(prefix)}, timeout_s=60,
                   what="both runs' pool managers alive at once")
    summaries = {tag: run.join(timeout_s=150) for tag, run in runs.items()}

    assert not both & {r["namespace"] for r in live_runs(prefix)}, "a run left its pool up"
    for tag, run in runs.items():
        assert summaries[tag]["tasks"] == N
        assert run.events("pool.activated"), f"{tag} activated no agent"
        assert not _foreign(run, tag), (tag, _foreign(run, tag)[:3])
        # namespace None: nothing is shut down for the run; its own end must have freed the cluster
        checks = [*run_checks(run.out, run.tasks, run.store_root(), None), check_executions(run.out)]
        assert all(c.ok for c in checks), (tag, [c.line() for c in checks])
