"""The pool over the shared llama.cpp engine on a local Ray: one engine actor serves every Host of
the GPU, the ledger counts the residents' KV tokens, and a killed engine is healed mid-run."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import ray

from agents.config import load_settings
from agents.engines.shared import engine_actors
from pool.driver.batch import RunOptions, run_batch
from pool.driver.runs import shutdown_pool
from pool.driver.synthetic import synthetic_tasks, write_tasks

pytestmark = [pytest.mark.integration, pytest.mark.llama, pytest.mark.timeout(900)]
NS = "selfheal-llama"  # run id "llama": the run's pool lives in <pool.namespace>-<run id>


def _settings(**pool: Any) -> Any:
    return load_settings(overrides={"engine": {"kind": "llama_cpp", "n_ctx": 1024},
                                    "pool": {"slots_per_gpu": 4, **pool}})


def _events(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def _killer(out: Path, after: int, done: dict[str, Any]) -> None:
    """Kill the engine actor once `after` results are committed."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ledger = out / "ledger.jsonl"
        if ledger.exists() and len(ledger.read_text().splitlines()) >= after:
            (handle,) = engine_actors(NS)
            done["killed_id"] = handle._actor_id
            ray.kill(handle, no_restart=True)
            return
        time.sleep(0.2)


def test_one_engine_serves_every_host_and_a_killed_engine_is_healed(
    local_ray: None, tmp_path: Path
) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(40, agents=6, seed=5))
    out = tmp_path / "out"
    killed: dict[str, Any] = {}
    killer = threading.Thread(target=_killer, args=(out, 8, killed), daemon=True)
    killer.start()
    try:
        summary = run_batch(RunOptions(tasks=tasks, out=out, settings=_settings(), agents=6,
                                       progress=False, run_id="llama", keep_pool=True))
        killer.join(timeout=5)
        assert "killed_id" in killed, "the engine was killed mid-run"
        (engine,) = engine_actors(NS)  # one engine for the GPU's 4 Hosts, a new one
        assert engine._actor_id != killed["killed_id"]
        info = ray.get(engine.info.remote())
        assert info["slots"] == 4 and info["kv_bytes_per_token"] == 23040
    finally:
        shutdown_pool(NS)

    rows = pq.read_table(out / "results.parquet").to_pylist()
    wanted = [json.loads(line)["task_id"] for line in tasks.read_text().splitlines()]
    assert sorted(r["task_id"] for r in rows) == sorted(wanted), "every task ends exactly once"
    statuses = Counter(r["status"] for r in rows)
    assert statuses["succeeded"] >= 30, statuses
    events = _events(out)
    crashes = [e for e in events if e["event"] == "recovery.decided" and "crash" in e["reason"]]
    assert crashes, "the lost engine reached recovery as a crash"
    base = [e for e in events if e["event"] == "pool.engine_base"]
    assert base and base[0]["reported_mib"] >= 92 and base[0]["engine_rss_mib"] >= base[0]["reported_mib"]
    residency = [e for e in events if e["event"] == "pool.residency"]
    assert residency and max(e["residents"] for e in residency) <= 4
    assert summary["tasks"] == 40
