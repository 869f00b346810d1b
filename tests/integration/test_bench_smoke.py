"""`selfheal bench` at tiny sizes: every benchmark runs, bench.json has its structure, figures
are finite. No timing assertions: this machine's timings are not the test's business."""

import json
import math
from pathlib import Path
from typing import Any

import pytest

from pool.bench import SECTIONS, TINY, BenchOptions, _llama_available, run_bench
from pool.bench.report import markdown, rows
from pool.bench.workload import shipped

pytestmark = pytest.mark.integration


def _numbers(obj: Any, path: str = "") -> list[tuple[str, float]]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [(path, float(obj))]
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in _numbers(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [x for i, v in enumerate(obj) for x in _numbers(v, f"{path}[{i}]")]
    return []


def test_stratified_subset_keeps_the_kinds() -> None:
    tasks, agents = shipped(24)
    kinds = {t.kind.value for t in tasks}
    assert 20 <= len(tasks) <= 28 and kinds == {"json", "label", "answer", "free"}
    assert {t.agent_id for t in tasks} <= {a.agent_id for a in agents}


def test_bench_runs_every_benchmark_and_writes_json_and_plot(local_ray: None, tmp_path: Path) -> None:
    res = run_bench(BenchOptions(out=tmp_path, sizes=TINY, sections=SECTIONS, real_slots=2))
    data = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 1000
    assert data["meta"]["sizes"]["heal_tasks"] == TINY.heal_tasks
    for key in ("activation", "scale", "overhead", "healing"):
        assert key in data, key
    if _llama_available():
        assert "kv_restore" in data and "real_model" in data
        assert 0 < data["kv_restore"]["kv_bytes"] <= data["kv_restore"]["kv_max_bytes"]
        assert data["kv_restore"]["with_kv"]["kv_restored"] == TINY.kv_reps
        assert data["kv_restore"]["with_kv_whole"]["kv_restored"] == TINY.kv_reps
        hot = data["kv_restore"]["hot_bytes"]  # the pool's hot tier names the engine's copy
        assert hot["with_kv"] < hot["without_kv"] + 100 < hot["with_kv_whole"]
        assert data["kv_restore"]["kv_fallbacks"] == 0
        assert data["kv_restore"]["without_kv"]["kv_restored"] == 0
        real = data["real_model"]  # both engines' own counters were read around every round
        for side in ("pool", "server"):
            assert real[f"{side}_decodes_per_task"]["p50"] >= 1
            assert real[f"{side}_tokens_per_decode"]["p50"] >= 1
            assert real[f"{side}_ms_per_decode"]["p50"] > 0
        assert real["server_in_order_tasks_per_s"]["p50"] > 0

    act = data["activation"]
    assert act["hot"]["n"] == act["disk"]["n"] == TINY.rounds * TINY.per_round
    assert act["naive"]["n"] == TINY.rounds
    big = data["scale"]["large"]
    assert big["agents"] == TINY.scale_agents and big["tasks_done"] == big["activated"]
    assert big["activation_ms"]["n"] >= big["activated"]
    heal = data["healing"]
    assert set(heal["policies"]) == {"none", "naive", "tiered"}
    for p in heal["policies"].values():
        assert p["tasks"] == TINY.heal_tasks and p["lost"] == 0 and p["duplicates"] == 0
        assert p["succeeded"] + p["failed"] == p["tasks"]
    for b in heal["budget"].values():
        assert b["ledger_crossed"] == 0 and b["slots_crossed"] == 0
        assert 0 < b["peak_residents_per_gpu"] <= b["slots_per_gpu"]

    numbers = _numbers(data)
    assert numbers and all(math.isfinite(v) for _, v in numbers)
    assert rows(res) and "| activation |" in markdown(res)


def test_batched_initial_checkpoints_commit_once_and_leave_nothing_half_done(tmp_path: Path) -> None:
    from agents.models import AgentRecord, AgentSpec
    from pool.store.checkpoint import MANIFEST, CheckpointStore

    store = CheckpointStore(tmp_path)
    records = [AgentRecord(spec=AgentSpec(agent_id=f"a{i}")) for i in range(50)]
    store.write(records[0], 3)  # committed by someone else first: left as it is
    assert store.write_initial_many(records) == 49
    assert store.write_initial_many(records) == 0
    assert store.latest("a0").epoch == 3 and store.latest("a7").version == 1  # type: ignore[union-attr]
    assert store.read("a7")[0] == records[7]
    # a crash after staging: a data file and a manifest temp, no manifest -> the agent does not exist
    staged = store._folder("b0")
    staged.mkdir(parents=True)
    store._stage_initial(staged, "b0", b"not linked")
    assert not store.exists("b0") and not (staged / MANIFEST).exists()
    entry = store.write(AgentRecord(spec=AgentSpec(agent_id="b0")), 0)
    assert entry.version == 1 and sorted(p.name for p in staged.iterdir() if p.name != ".lock") == [
        MANIFEST, "v00000001.arrow"]
