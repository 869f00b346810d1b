"""Faults during a run: killed Hosts, manager and monitor, a zombie Host, a poison agent, a task
that kills its Host, a full disk, corrupt checkpoints. Every test ends with the three checks of
`pool.ops.checks`.

Covered elsewhere, not repeated here: kill -9 at each step of a checkpoint write
(`tests/unit/test_checkpoint.py::test_kill_9_at_each_step`, with two writers fenced by epoch in
`test_two_processes_epoch_fencing`) and the fuzzing of the checkpoint reader
(`test_decode_fuzz_raises_only_checkpoint_corrupt`, `test_read_fuzz_newest_file`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from chaos_harness import NAMESPACE, Run, assert_checks, assert_like_baseline, baseline, settings
from chaos_inject import executions_dir

from agents.models import AgentRecord, AgentSpec
from pool.ops.checks import actor_pids
from pool.runtime.actors import MANAGER_NAME, MONITOR_NAME
from pool.store.checkpoint import MANIFEST, CheckpointStore

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def _manager() -> ray.actor.ActorHandle:
    return ray.get_actor(MANAGER_NAME, namespace=NAMESPACE)


def _rows(run: Run) -> list[dict]:
    return pq.read_table(run.out / "results.parquet").to_pylist()


def _kill(name: str, sig: int = signal.SIGKILL) -> int:
    pid = actor_pids()[name]
    os.kill(pid, sig)
    return pid


def _wait_restarted(name: str, old_pid: int, timeout_s: float = 60) -> None:
    stop = time.monotonic() + timeout_s
    while actor_pids().get(name, old_pid) == old_pid:
        assert time.monotonic() < stop, f"{name} did not restart"
        time.sleep(0.1)


def test_host_kills_restore_agents_and_rerun_tasks(chaos_ray: Path, tmp_path: Path) -> None:
    cfg = settings(engine={"step_cost_s": 0.01})
    base = baseline(tmp_path, 1000, 200, cfg, seed=11)
    run = Run(tmp_path, 1000, 200, cfg, seed=11).start()
    rng, kills, killed = random.Random(7), 0, set()
    slots = run.cfg.pool.slots_per_gpu
    run.wait_for(lambda: run.committed() >= 50, what="the first results")
    while run.thread.is_alive() and kills < 12:
        hosts = {n: p for n, p in actor_pids("host-").items() if p not in killed}
        if len(hosts) >= slots - 1:  # at most two Hosts restarting at a time
            killed.add(pid := hosts[rng.choice(sorted(hosts))])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                kills += 1
        time.sleep(0.3)
    run.join()
    assert kills >= 5, kills
    # An agent whose Host was killed comes back from the disk tier (its committed checkpoint),
    # never from an older hot copy; one that had no work left is not activated again at all.
    events = [e for e in run.events() if e["event"] in ("pool.host_lost", "pool.activated")]
    back = 0
    for i, e in enumerate(events):
        if e["event"] == "pool.host_lost" and e["agent_id"]:
            nxt = next((a for a in events[i + 1:] if a["event"] == "pool.activated"
                        and a["agent_id"] == e["agent_id"]), None)
            assert nxt is None or nxt["tier"] == "disk", (e, nxt)
            back += nxt is not None
    assert back, "some kill hit a Host under an agent that had work left, and it came back"
    assert_checks(run)
    assert_like_baseline(run, base, slack=0.05)  # not "every task accounted for, all failed"


@pytest.mark.parametrize("name", [MANAGER_NAME, MONITOR_NAME])
def test_manager_or_monitor_killed_restarts_and_run_completes(
    chaos_ray: Path, tmp_path: Path, name: str
) -> None:
    cfg = settings(engine={"step_cost_s": 0.003})
    base = baseline(tmp_path, 400, 80, cfg, seed=12)
    run = Run(tmp_path, 400, 80, cfg, seed=12).start()
    for target in (80, 220):
        run.wait_for(lambda t=target: run.committed() >= t, what=f"{target} results")  # type: ignore[misc]
        pid = _kill(name)
        _wait_restarted(name, pid)
    summary = run.join()
    assert summary["tasks"] == run.n
    if name == MANAGER_NAME:
        assert len(run.events("driver.manager_restarted")) >= 1
    assert_checks(run)
    assert_like_baseline(run, base, slack=0.05)


def test_zombie_host_is_fenced_by_epoch_and_its_late_result_discarded(
    chaos_ray: Path, tmp_path: Path
) -> None:
    cfg = settings(engine={"step_cost_s": 0.03}, pool={"watchdog_s": 3.0, "batch_per_agent": 4})
    run = Run(tmp_path, 240, 40, cfg, seed=13, keep_pool=True).start()  # drained after the run
    run.wait_for(lambda: run.committed() >= 20, what="the first results")
    busy: dict = {}

    def running() -> bool:
        hosts = ray.get(_manager().status.remote())["hosts"]
        busy.update(next((h for h in hosts if h["busy"] and h["agent"]), {}))
        return bool(busy)

    run.wait_for(running, what="a busy Host")
    host, agent = busy["host"], busy["agent"]
    pid = _kill(host, signal.SIGSTOP)
    try:
        store = CheckpointStore(run.store_root())
        before = store.latest(agent).epoch  # type: ignore[union-attr]
        run.wait_for(lambda: any(e["host"] == host for e in run.events("pool.host_stalled")),
                     what="the watchdog")
        summary = run.join()  # the agent's tasks ran again on another Host
    finally:
        os.kill(pid, signal.SIGCONT)
    fenced = store.latest(agent).epoch  # type: ignore[union-attr]
    assert fenced > before
    discarded: list[dict] = []
    stop = time.monotonic() + 60
    while not discarded and time.monotonic() < stop:
        events = ray.get(_manager().drain.remote())["events"]
        discarded = [e for e in events if e["event"] == "pool.zombie_discarded" and e["host"] == host]
        time.sleep(0.2)
    assert discarded and "StaleEpoch" in discarded[0]["error"], discarded
    assert store.latest(agent).epoch == fenced, "the zombie's write did not land"
    assert summary["tasks"] == run.n
    assert_checks(run)


def _seed_store(run: Run, agents: int) -> CheckpointStore:
    store = CheckpointStore(run.store_root())
    for i in range(agents):
        store.write(AgentRecord(spec=AgentSpec(agent_id=f"agent-{i:06d}", priority=i % 10)), 0)
    return store


def _folder(store: CheckpointStore, agent: str) -> Path:
    return store._folder(agent)


def test_poison_agent_whose_checkpoint_never_loads_goes_failed(chaos_ray: Path, tmp_path: Path) -> None:
    run = Run(tmp_path, 300, 30, settings(), seed=14)
    store = _seed_store(run, 30)
    poison = "agent-000003"
    for path in _folder(store, poison).glob("*.arrow"):
        path.write_bytes(b"\x00" * 64)
    run.start().join()
    rows = [r for r in _rows(run) if r["agent_id"] == poison]
    assert rows and all(r["status"] == "failed" and "CheckpointCorrupt" in r["error"] for r in rows)
    others = [r for r in _rows(run) if r["agent_id"] != poison]
    assert sum(r["status"] == "succeeded" for r in others) >= 0.9 * len(others)
    assert list((store.root / "quarantine" / poison).glob("*.reason.json"))
    assert_checks(run, quarantined_ok=(poison,))


def _executing(pid: int) -> str:
    """The task the Host process `pid` last handed its engine ("": none yet)."""
    log = executions_dir() / f"{pid}.log"  # type: ignore[operator]
    lines = log.read_text().splitlines() if log.exists() else []
    return lines[-1].split("\t")[0] if lines else ""


def test_a_task_whose_host_always_dies_fails_alone(chaos_ray: Path, tmp_path: Path) -> None:
    """Kill the Host under one agent whenever it runs a task, in batches of three: the task it was
    running is charged each death and fails alone at `pool.task_deaths`; its batch mates are not
    charged, the agent is neither FAILED nor quarantined, and its other tasks run once the kills
    stop."""
    no_faults = dict.fromkeys(("garbage", "truncation", "timeout", "oom", "crash", "permanent"), 0.0)
    # only the kills may fail a task: injected faults would let recovery fail it first
    cfg = settings(engine={"step_cost_s": 1.0, "faults": no_faults}, recovery={"intensity": 2},
                   pool={"task_deaths": 2, "batch_per_agent": 3})
    run = Run(tmp_path, 60, 20, cfg, seed=15)
    poison, kills = "agent-000005", 0
    with open(run.tasks, "a") as fh:  # enough work that it is resident whenever we look
        for i in range(6):
            fh.write(json.dumps({"task_id": f"p{i}", "agent_id": poison, "prompt": f"poison {i}"}) + "\n")
    run.start()
    limit = run.cfg.pool.task_deaths

    def task_failed() -> bool:
        if not (run.out / "events.jsonl").exists():
            return False
        return any(e["agent_id"] == poison for e in run.events("pool.task_killed_hosts"))

    deadline = time.monotonic() + 180
    while run.thread.is_alive() and not task_failed() and time.monotonic() < deadline:
        try:
            hosts = ray.get(_manager().status.remote(), timeout=10)["hosts"]
        except (ValueError, ray.exceptions.RayError):
            continue
        for h in hosts:
            if (h["agent"] == poison and h["busy"] and h["host"] in (pids := actor_pids("host-"))
                    and _executing(pids[h["host"]]).startswith("p")):  # a poison task, in the engine
                os.kill(pids[h["host"]], signal.SIGKILL)
                kills += 1
                time.sleep(1.0)  # let the pool notice and re-activate it (a task takes seconds)
        time.sleep(0.05)
    run.join()
    lost = [e for e in run.events("pool.host_lost") if e["agent_id"] == poison]
    killed = [e for e in run.events("pool.task_killed_hosts") if e["agent_id"] == poison]
    assert len(killed) == 1 and killed[0]["deaths"] == limit, (kills, lost, killed)
    assert len(lost) >= limit
    rows = {r["task_id"]: r for r in _rows(run)}
    dead = rows[killed[0]["task_id"]]
    assert dead["status"] == "failed" and dead["error"] == f"its Host died {limit} times running it"
    assert not [e for e in run.events("pool.agent_failed") if e["agent_id"] == poison]
    rest = [r for r in rows.values() if r["agent_id"] == poison and r["task_id"] != dead["task_id"]]
    assert len(rest) >= 6 and all(r["status"] == "succeeded" for r in rest), rest
    assert not (run.store_root() / "quarantine" / poison).exists(), "its checkpoint verifies"
    others = [r for r in rows.values() if r["agent_id"] != poison]
    assert sum(r["status"] == "succeeded" for r in others) >= 0.9 * len(others)
    assert_checks(run)


def test_disk_full_fails_loudly_and_keeps_previous_versions(chaos_ray: Path, tmp_path: Path) -> None:
    flag = chaos_ray / "enospc"
    run = Run(tmp_path, 400, 40, settings(engine={"step_cost_s": 0.005}), seed=16).start()
    run.wait_for(lambda: run.committed() >= 100, what="100 results")
    flag.touch()
    try:
        time.sleep(1.5)
    finally:
        flag.unlink()
    run.join()
    loud = [e for e in run.events("pool.agent_failed") + run.events("pool.park_failed")
            if "No space left on device" in e.get("reason", "")]
    assert loud, "a write on a full disk fails loudly"
    failed_rows = [r for r in _rows(run) if "No space left on device" in (r["error"] or "")]
    assert all(r["status"] == "failed" for r in failed_rows)
    assert_checks(run)  # every agent's last committed version is intact


def _corrupt(store: CheckpointStore, agent: str, how: str) -> None:
    folder = _folder(store, agent)
    path = folder / "v00000002.arrow"
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero":
        path.write_bytes(b"")
    elif how == "flipped":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:  # a valid file of another schema version, with a matching checksum
        batch = next(iter(pa.ipc.open_stream(data)))
        batch = batch.replace_schema_metadata({b"selfheal.schema_version": b"2"})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        new = bytes(sink.getvalue())
        path.write_bytes(new)
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest["entries"][-1].update(size=len(new), sha256=hashlib.sha256(new).hexdigest())
        (folder / MANIFEST).write_text(json.dumps(manifest))


def test_corrupt_checkpoints_are_quarantined_and_previous_used(chaos_ray: Path, tmp_path: Path) -> None:
    run = Run(tmp_path, 200, 20, settings(), seed=17, keep_pool=True)  # looked at after the run
    store = _seed_store(run, 20)
    kinds = ["truncated", "zero", "flipped", "schema_version"]
    for i, how in enumerate(kinds):
        agent = f"agent-{i:06d}"
        store.write(AgentRecord(spec=AgentSpec(agent_id=agent), tasks_done=41), 0)
        _corrupt(store, agent, how)
    run.start().join()
    for i, how in enumerate(kinds):
        agent = f"agent-{i:06d}"
        notes = [json.loads(p.read_text()) for p in (store.root / "quarantine" / agent).glob("*.json")]
        assert [n["version"] for n in notes] == [2], (how, notes)
        rows = [r for r in _rows(run) if r["agent_id"] == agent]
        assert rows and not any("Corrupt" in (r["error"] or "") for r in rows), how
        assert store.read(agent)[0].tasks_done >= 1 or not rows
    assert ray.get(_manager().status.remote())["agents"] == 20  # the manager kept running
    assert_checks(run)


def test_a_host_frozen_in_bind_or_park_is_fenced_and_its_agent_moves_on(
    chaos_ray: Path, tmp_path: Path
) -> None:
    """The watchdog covers `bind` and `park` as it covers `run`: freeze (SIGSTOP) the Host the
    planner binds to first, then the one the agent lands on and pause the pool so that it must
    park there. Both times the agent is fenced by a new epoch and moves on; the zombies' late
    answers are discarded once they wake."""
    from agents.models import Task
    from pool.driver.batch import fresh_manager

    no_faults = {"garbage": 0, "truncation": 0, "timeout": 0, "oom": 0, "crash": 0, "permanent": 0}
    cfg = settings(engine={"faults": no_faults}, pool={"watchdog_s": 2.0, "slots_per_gpu": 2})
    manager = fresh_manager(cfg, tmp_path / "ckpt")
    ray.get(manager.start.remote())
    store = CheckpointStore(tmp_path / "ckpt")
    first = next(h["host"] for h in ray.get(manager.status.remote())["hosts"] if h["gpu"] == 0)
    frozen = [_kill(first, signal.SIGSTOP)]

    def tasks(tag: str) -> list:
        return [(Task(task_id=f"{tag}-{i}", agent_id="a0", prompt=f"What is {i}+1?",
                      expected=str(i + 1)), None) for i in range(2)]

    def results(want: int) -> tuple[list, list]:
        got, events, stop = [], [], time.monotonic() + 60
        while len(got) < want and time.monotonic() < stop:
            drained = ray.get(manager.drain.remote())
            got += drained["results"]
            events += drained["events"]
            time.sleep(0.05)
        return got, events

    try:
        ray.get(manager.register.remote([AgentSpec(agent_id="a0")]))
        ray.get(manager.submit.remote(tasks("bind")))
        got, events = results(2)
        assert [r.status.value for r in got] == ["succeeded"] * 2
        stalled = [e for e in events if e["event"] == "pool.host_stalled"]
        assert [(e["host"], e["stage"]) for e in stalled] == [(first, "bind")]
        second = next(h["host"] for h in ray.get(manager.status.remote())["hosts"] if h["agent"])
        assert second != first
        before = store.latest("a0").epoch  # type: ignore[union-attr]
        frozen.append(_kill(second, signal.SIGSTOP))
        paused = ray.get(manager.pause.remote(), timeout=60)  # the park there never answers
        assert paused["gpus"][0]["mode"] == "parked"
        events = ray.get(manager.drain.remote())["events"]
        assert [(e["host"], e["stage"]) for e in events if e["event"] == "pool.host_stalled"] == [
            (second, "park")]
        assert store.latest("a0").epoch > before  # type: ignore[union-attr]
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    fenced = store.latest("a0").epoch  # type: ignore[union-attr]
    discarded: dict[str, str] = {}
    stop = time.monotonic() + 60
    while len(discarded) < 2 and time.monotonic() < stop:
        discarded |= {e["host"]: e["error"] for e in ray.get(manager.drain.remote())["events"]
                      if e["event"] == "pool.zombie_discarded"}
        time.sleep(0.1)
    # The frozen park finds its agent committed already and writes nothing (else StaleEpoch).
    assert set(discarded) == {first, second}, discarded
    assert store.latest("a0").epoch == fenced, "nothing the zombies did landed"
    ray.get(manager.resume.remote())
    ray.get(manager.submit.remote(tasks("after")))
    got, _ = results(2)
    assert sorted(r.status.value for r in got) == ["succeeded"] * 2
    ray.kill(manager, no_restart=True)


def test_a_hung_monitor_never_hangs_the_pool(chaos_ray: Path, tmp_path: Path) -> None:
    """SIGSTOP the HealthMonitor mid-run: Hosts wait `pool.monitor_timeout_s` for it, then score
    and decide alone; the run ends with every task accounted for while the monitor is frozen."""
    cfg = settings(engine={"step_cost_s": 0.005}, pool={"monitor_timeout_s": 2.0})
    base = baseline(tmp_path, 200, 20, cfg, seed=18)
    run = Run(tmp_path, 200, 20, cfg, seed=18).start()
    run.wait_for(lambda: run.committed() >= 40, what="the first results")
    pid = _kill(MONITOR_NAME, signal.SIGSTOP)
    try:
        run.join(timeout_s=240)  # before: every Host blocked on `assess` for ever
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    alone = run.events("host.monitor_unavailable")
    assert alone and all("no answer in 2.0 s" in e["reason"] for e in alone), alone[:3]
    assert_checks(run)
    assert_like_baseline(run, base, slack=0.05)
