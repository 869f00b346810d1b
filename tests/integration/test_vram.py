"""The pool and the GPU: reconciliation with a device reading, migration off a GPU under memory
pressure, and giving the GPU back (engine sleep, else parking). One local Ray with two logical
GPUs; the scripted engine simulates what pynvml would read and whether the engine can sleep."""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from agents.config import Settings, load_settings
from agents.models import AgentSpec, Task
from pool.driver.batch import RunOptions, fresh_manager, run_batch
from pool.driver.synthetic import synthetic_tasks, write_tasks

pytestmark = pytest.mark.integration

NO_FAULTS = {"garbage": 0.0, "truncation": 0.0, "timeout": 0.0, "oom": 0.0, "crash": 0.0,
             "permanent": 0.0}


@pytest.fixture(scope="module")
def two_gpus() -> Iterator[None]:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_gpus=2, num_cpus=2, namespace="selfheal",
             include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _events(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def _settings(**engine: Any) -> Settings:
    return load_settings(overrides={
        "engine": {"kind": "scripted", "faults": NO_FAULTS, "step_cost_s": 0.01, **engine},
        "pool": {"num_gpus": 2, "slots_per_gpu": 3, "reconcile_s": 0.3, "batch_per_agent": 2},
    })


def test_a_gpu_measured_over_its_limit_sheds_its_agents_to_the_other_gpu(
    two_gpus: None, tmp_path: Path
) -> None:
    # Once one of its Hosts answered 6 steps, GPU 0 reads 7200 MiB used by the pool: over the
    # 6963 MiB limit whatever its residents are, while they are at work (9 agents, 300 tasks).
    settings = _settings(device={"used_mib": {0: 7200, 1: 0}, "used_from_steps": 6},
                         step_cost_s=0.05)
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(300, agents=9, seed=4))
    out = tmp_path / "out"
    summary = run_batch(RunOptions(tasks=tasks, out=out, settings=settings, agents=9, progress=False))

    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len({r["task_id"] for r in rows}) == len(rows) == 300
    assert all(r["status"] == "succeeded" for r in rows), [r["error"] for r in rows][:3]
    events = _events(out)
    gpu0 = [e for e in events if e["event"] == "pool.vram_reconciled" and e["gpu"] == 0
            and e["measured_mib"] == 7200]
    assert gpu0 and all(e["extra_mib"] > 0 for e in gpu0)
    gpu1 = [e for e in events if e["event"] == "pool.vram_reconciled" and e["gpu"] == 1]
    assert gpu1 and all(e["extra_mib"] == 0 for e in gpu1)  # measured below the ledger

    first = min(e["ts"] for e in gpu0)
    # Placed after the reading: the Host was reserved (the bind began) after it.
    late = [e for e in events if e["event"] == "pool.activated" and e["ts"] - e["latency_s"] > first]
    assert late and all(e["gpu"] == 1 for e in late), "nothing is placed on the pressed GPU"
    moved = [e for e in events if e["event"] == "pool.migrated" and "memory pressure" in e["why"]]
    assert moved, "agents with work on the pressed GPU moved to the other one"
    for e in moved:
        assert (e["src_gpu"], e["dst_gpu"]) == (0, 1) and e["unavailable_s"] >= 0
    shed = [e for e in events if e["event"] == "pool.parked" and e["why"] == "memory pressure"]
    assert shed and {e["gpu"] for e in shed} == {0}
    assert summary["migrations"] >= len(moved)


def test_without_a_device_reading_reconciliation_stops_with_one_line(
    two_gpus: None, tmp_path: Path
) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(6, agents=3, seed=2))
    out = tmp_path / "out"
    run_batch(RunOptions(tasks=tasks, out=out, settings=_settings(), agents=3, progress=False))
    events = _events(out)
    unmeasured = [e for e in events if e["event"] == "pool.vram_unmeasured"]
    assert len(unmeasured) == 1 and "no GPU" in unmeasured[0]["reason"]
    assert not [e for e in events if e["event"] == "pool.vram_reconciled"]


def test_with_every_gpu_over_its_limit_the_run_waits_then_goes_on_when_memory_is_freed(
    two_gpus: None, tmp_path: Path
) -> None:
    # Once a Host answered 4 steps, its GPU reads 7200 MiB (over the 6963 MiB limit) for 5 s,
    # then 0: another tenant came and left. When both GPUs read so, nothing can move: the run
    # waits and says so.
    settings = _settings(device={"used_mib": {0: 7200, 1: 7200}, "used_from_steps": 4,
                                 "used_for_s": 5.0})
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(60, agents=3, seed=6))
    out = tmp_path / "out"
    run_batch(RunOptions(tasks=tasks, out=out, settings=settings, agents=3, progress=False))

    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 60 and all(r["status"] == "succeeded" for r in rows)
    events = _events(out)
    waits = [e for e in events if e["event"] == "driver.waiting_for_memory"]
    assert waits and [g["gpu"] for g in waits[0]["gpus"]] == [0, 1]
    assert all(g["used_mib"] > g["limit_mib"] for g in waits[0]["gpus"])
    assert [e for e in events if e["event"] == "pool.parked" and e["why"] == "memory pressure"]
    bound = [(e["ts"] - e["latency_s"], e["gpu"]) for e in events if e["event"] == "pool.activated"]
    freed = []
    for gpu in (0, 1):  # nothing was bound on a GPU while it read over its limit
        readings = [(e["ts"], e["measured_mib"]) for e in events
                    if e["event"] == "pool.vram_reconciled" and e["gpu"] == gpu]
        pressed = min(ts for ts, mib in readings if mib == 7200)
        freed.append(min(ts for ts, mib in readings if mib == 0 and ts > pressed))
        assert not [t for t, g in bound if g == gpu and pressed < t < freed[-1]]
    assert [t for t, _ in bound if t > min(freed)], "work went on once a reading freed a GPU"


def _wait_results(manager: Any, want: int, timeout_s: float = 60.0) -> list[Any]:
    import ray

    got: list[Any] = []
    end = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < end:
        got += ray.get(manager.drain.remote())["results"]
        time.sleep(0.05)
    return got


def _tasks(prefix: str, agents: int) -> list[tuple[Task, None]]:
    return [(Task(task_id=f"{prefix}-{i}", agent_id=f"a{i % agents}", prompt=f"What is {i}+1?",
                  kind="answer", expected=str(i + 1)), None) for i in range(2 * agents)]


@pytest.mark.parametrize(("can_sleep", "mode"), [(False, "parked"), (True, "slept")])
def test_pause_gives_the_gpus_back_and_resume_takes_them_again(
    two_gpus: None, tmp_path: Path, can_sleep: bool, mode: str
) -> None:
    import ray

    settings = _settings(device={"can_sleep": can_sleep})
    manager = fresh_manager(settings, tmp_path / "ckpt")
    ray.get(manager.start.remote())
    ray.get(manager.register.remote([AgentSpec(agent_id=f"a{i}") for i in range(4)]))
    ray.get(manager.submit.remote(_tasks("before", 4)))
    assert len(_wait_results(manager, 8)) == 8

    paused = ray.get(manager.pause.remote())
    assert {g["mode"] for g in paused["gpus"]} == {mode}
    status = ray.get(manager.status.remote())
    residents = [h for h in status["hosts"] if h["agent"]]
    if mode == "parked":  # every resident checkpointed and unbound: the ledger holds the base only
        assert not residents and sum(g["parked"] for g in paused["gpus"]) == 4
        assert all(g["used_mib"] == settings.pool.engine_base_mib for g in status["ledger"])
    else:  # the engines sleep; the agents stay bound to their Hosts
        assert len(residents) == 4
    assert {g["paused"] for g in status["ledger"]} == {mode}

    ray.get(manager.submit.remote(_tasks("while", 4)))
    status = ray.get(manager.status.remote())  # the work waits: nothing runs while paused
    assert status["queued"] == 8 and not any(h["busy"] for h in status["hosts"])

    ray.get(manager.resume.remote())
    results = _wait_results(manager, 8)
    assert sorted(r.task_id for r in results) == sorted(f"while-{i}" for i in range(8))
    assert all(r.status.value == "succeeded" for r in results), [r.error for r in results]
    ray.kill(manager, no_restart=True)


def test_busy_agents_under_pressure_with_the_default_fault_mix_stay_alive(
    two_gpus: None, tmp_path: Path
) -> None:
    """200 tasks per agent with the default scripted fault mix (a tier-2 fault every 15 tasks or
    so) while GPU 0 comes under pressure: supervision must not fail the agents for their
    throughput, and a migration's park must not race another park of the same Host."""
    settings = load_settings(overrides={
        "engine": {"kind": "scripted", "step_cost_s": 0.01,
                   "device": {"used_mib": {0: 7200, 1: 0}, "used_from_steps": 20}},
        "pool": {"num_gpus": 2, "slots_per_gpu": 3, "reconcile_s": 0.3},
    })
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(1200, agents=6, seed=5))
    out = tmp_path / "out"
    run_batch(RunOptions(tasks=tasks, out=out, settings=settings, agents=6, progress=False))
    events = _events(out)
    assert not [e for e in events if e["event"] == "pool.agent_failed"]
    rows = pq.read_table(out / "results.parquet").to_pylist()
    failed = [r["error"] for r in rows if r["status"] == "failed"]
    assert len(failed) < 0.03 * len(rows) and all("fail_task" in e for e in failed), failed[:3]
    assert [e for e in events if e["event"] == "pool.migrated" and "memory pressure" in e["why"]]


def test_a_pause_outlives_a_manager_restart(two_gpus: None, tmp_path: Path) -> None:
    import ray

    settings = _settings()
    manager = fresh_manager(settings, tmp_path / "ckpt")
    ray.get(manager.start.remote())
    specs = [AgentSpec(agent_id=f"a{i}") for i in range(4)]
    ray.get(manager.register.remote(specs))
    ray.get(manager.pause.remote())
    boot = ray.get(manager.drain.remote())["boot"]

    ray.kill(manager, no_restart=False)  # Ray restarts it empty; the driver feeds it again
    end = time.monotonic() + 60
    while True:  # a call in flight while it restarts fails ("may or may not have been executed")
        try:
            if ray.get(manager.drain.remote())["boot"] != boot:
                break
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
            pass
        assert time.monotonic() < end, "the manager did not come back"
        time.sleep(0.1)
    ray.get(manager.start.remote())
    ray.get(manager.register.remote(specs))
    ray.get(manager.submit.remote(_tasks("after", 4)))
    status = ray.get(manager.status.remote())
    assert {g["paused"] for g in status["ledger"]} == {"parked"}
    assert status["queued"] == 8 and not any(h["busy"] for h in status["hosts"])
    assert ray.get(manager.drain.remote())["paused"] is True

    ray.get(manager.resume.remote())
    results = _wait_results(manager, 8)
    assert sorted(r.task_id for r in results) == sorted(f"after-{i}" for i in range(8))
    assert all(r.status.value == "succeeded" for r in results), [r.error for r in results]
    assert not (tmp_path / "ckpt" / "paused.json").exists()
    ray.kill(manager, no_restart=True)


def test_a_drain_that_waits_returns_as_soon_as_a_result_is_there(two_gpus: None, tmp_path: Path) -> None:
    # The benchmark's long poll: one drain asked to wait up to 60 s for a task that takes a
    # second or so (0.4 s steps) comes back with its result, not empty and not after 60 s.
    import ray

    manager = fresh_manager(_settings(step_cost_s=0.4), tmp_path / "ckpt")
    ray.get(manager.start.remote())
    ray.get(manager.register.remote([AgentSpec(agent_id="a0")]))
    assert ray.get(manager.drain.remote(0.2))["results"] == []  # nothing to wait for: 0.2 s
    ray.get(manager.submit.remote(_tasks("poll", 1)[:1]))
    started = time.monotonic()
    got = ray.get(manager.drain.remote(60.0))
    assert [r.task_id for r in got["results"]] == ["poll-0"]
    assert 0.3 < time.monotonic() - started < 30
    ray.kill(manager, no_restart=True)
