"""The Host loop without Ray: scripted engine, real checkpoint store, the monitor's logic."""

from pathlib import Path
from typing import Any

import pytest
from host_data import make_host, make_tasks

from agents import codec
from agents.config import EngineConfig, FaultRates, Settings, load_settings
from agents.engines.base import GenRequest
from agents.engines.scripted import ScriptedEngine, fault_of
from agents.errors import EngineFault, FaultClass, StaleEpoch
from agents.models import GenerationParams, Task, TaskStatus
from agents.state import AgentState
from recovery.monitor import Monitor


def test_healthy_batch_commits_memory_before_returning(tmp_path: Path) -> None:
    host, store = make_host(tmp_path, None)
    outcomes = host.run(make_tasks(3), headroom=0.5)
    assert [o.result.status for o in outcomes] == [TaskStatus.SUCCEEDED] * 3
    record, entry = store.read("a1")
    assert record.tasks_done == 3 and len(record.memory) == 6 and entry.epoch == 1
    assert host.agent is not None and host.agent.state is AgentState.IDLE


@pytest.mark.parametrize(("fault", "tier"), [("garbage", 1), ("truncation", 1), ("timeout", 1), ("oom", 2)])
def test_tiered_recovery_heals_each_fault(tmp_path: Path, fault: str, tier: int) -> None:
    """Faults recur with the scripted engine's probabilities, so: most heal at the fault's tier on
    this Host, the rest are handed back to move (tier 2) or fail at the attempt cap; none heals
    without a recovery."""
    host, _ = make_host(tmp_path, fault)
    outcomes = host.run(make_tasks(20), headroom=0.5)
    healed = [o.result for o in outcomes if o.result and o.result.status is TaskStatus.SUCCEEDED]
    moved = [o for o in outcomes if o.result is None]
    assert all(o.carry is not None and o.carry.host_changed for o in moved)
    assert len(healed) + len(moved) >= 16, [o.result.error for o in outcomes if o.result]
    assert all(r.attempts >= 2 and max(r.tiers) >= tier for r in healed)
    assert sum(max(r.tiers) == tier for r in healed) >= 10


def test_crash_asks_for_migration(tmp_path: Path) -> None:
    host, _ = make_host(tmp_path, "crash")
    outcomes = host.run(make_tasks(1), headroom=0.5)
    migrate = [o for o in outcomes if o.result is None]
    if migrate:  # a retry may clear the crash before the policy escalates
        assert migrate[0].carry is not None and migrate[0].carry.host_changed
    else:
        assert outcomes[0].result.status is TaskStatus.SUCCEEDED


def test_permanent_fault_fails_the_task_not_the_agent(tmp_path: Path) -> None:
    host, _ = make_host(tmp_path, "permanent")
    (outcome,) = host.run(make_tasks(1), headroom=0.5)
    assert outcome.result.status is TaskStatus.FAILED
    assert outcome.result.attempts == load_settings().recovery.max_attempts
    assert outcome.result.truth == "permanent"
    assert host.agent.state is not AgentState.FAILED


def test_no_recovery_fails_at_first_fault(tmp_path: Path) -> None:
    host, _ = make_host(tmp_path, "garbage", mode="none")
    (outcome,) = host.run(make_tasks(1), headroom=0.5)
    assert outcome.result.status is TaskStatus.FAILED and outcome.result.attempts == 1


def test_zombie_host_cannot_overwrite_a_newer_checkpoint(tmp_path: Path) -> None:
    zombie, store = make_host(tmp_path, None)  # bound with epoch 1
    store.write(store.read("a1")[0], epoch=2)  # the agent moved on elsewhere
    with pytest.raises(StaleEpoch):
        zombie.run(make_tasks(1), headroom=0.5)
    assert store.latest("a1").epoch == 2


def test_park_after_a_run_returns_the_committed_state_without_writing_again(tmp_path: Path) -> None:
    host, store = make_host(tmp_path, None)
    host.run(make_tasks(1), headroom=0.5)
    version = store.latest("a1").version
    blob = host.park()
    parked = codec.decode(blob)
    assert parked.state is AgentState.DORMANT and host.agent is None
    assert store.latest("a1").version == version, "nothing changed since the run's commit"
    committed = store.read("a1")[0]
    assert committed.model_copy(update={"state": AgentState.DORMANT}) == parked


def test_scripted_faults_are_seeded_and_match_rates() -> None:
    rates = FaultRates().model_dump()
    draws = [fault_of(0, f"t{i}", rates) for i in range(20_000)]
    assert draws == [fault_of(0, f"t{i}", rates) for i in range(20_000)]
    assert abs(draws.count("garbage") / len(draws) - 0.08) < 0.01
    assert abs(draws.count("none") / len(draws) - 0.77) < 0.015
    assert Settings().engine.kind.value == "llama_cpp" and EngineConfig().faults == FaultRates()


def test_a_checkpoint_committed_while_resident_binds_after_a_lost_host(tmp_path: Path) -> None:
    host, store = make_host(tmp_path, None)
    host.run(make_tasks(1), headroom=0.5)  # commits the record in state IDLE; then the Host "dies"
    assert store.read("a1")[0].state is AgentState.IDLE
    fresh, _ = make_host(tmp_path / "other", None)
    fresh.store, fresh.agent = store, None
    info = fresh.bind("a1", None, epoch=2)
    assert info["state"] == "idle" and fresh.agent.tasks_done == 1


def test_illegal_transition_pickles() -> None:
    import pickle

    from agents.state import Event, IllegalTransition

    err = pickle.loads(pickle.dumps(IllegalTransition(AgentState.FAILED, Event.START)))
    assert err.state is AgentState.FAILED and "start" in str(err)


def test_an_agent_handing_a_task_back_for_migration_can_be_parked(tmp_path: Path) -> None:
    host, store = make_host(tmp_path, "crash")
    for attempt in range(8):  # the crash may clear on a plain retry; find a task that migrates
        outcomes = host.run([(Task(task_id=f"m{attempt}", agent_id="a1", prompt="p"), None)], headroom=0.5)
        if outcomes[0].result is None:
            break
    assert outcomes[0].result is None, "some task asks for migration"
    blob = host.park()
    assert codec.decode(blob).state is AgentState.DORMANT


def test_a_round_of_retries_backs_off_once_not_once_per_task(tmp_path: Path) -> None:
    host, _ = make_host(tmp_path, "timeout")
    host.settings = load_settings(overrides={"engine": {"kind": "scripted"},
                                             "recovery": {"backoff_base_s": 0.05}})
    waits: list[float] = []
    host.sleep = waits.append
    host.assess = Monitor(host.settings.health, host.settings.recovery, clock=lambda: 0.0).assess
    outcomes = host.run(make_tasks(4), headroom=0.5)
    attempts = [o.result.attempts for o in outcomes if o.result]
    rounds = max(attempts) - 1  # rounds after the first, each retrying some of the 4 tasks
    assert len(waits) == rounds < sum(a - 1 for a in attempts)  # one wait per round, not per task
    assert 0 < waits[0] <= 0.05 * 1.5


def test_memory_pressure_compresses_then_migrates_off_the_gpu(tmp_path: Path) -> None:
    host, _ = make_host(tmp_path, None)
    # No fault injected: the ledger says the GPU is over its limit (a measured extra), so the
    # answer is fine but the step is OOM; tier 2 compresses first, then hands the task back.
    (outcome,) = host.run(make_tasks(1), headroom=-0.05)
    assert outcome.result is None and outcome.fault is FaultClass.OOM
    assert outcome.carry.memory_compressed and outcome.carry.host_changed
    assert outcome.carry.tiers == (2, 2)


def test_engine_device_methods_and_their_fallbacks(tmp_path: Path) -> None:
    host, _ = make_host(tmp_path, None)
    assert host.pause_engine() is False and host.wake_engine() is False  # cannot sleep: the pool parks
    assert host.measure() == {"available": False, "reason": "no GPU: VRAM is not measured"}
    assert host.engine_info() == {}

    sim = EngineConfig(kind="scripted", device={"can_sleep": True, "used_mib": {0: 700}})
    host.engine = ScriptedEngine(sim)
    assert host.pause_engine() is True
    with pytest.raises(EngineFault, match="asleep"):  # a pool that forgot to wake it fails loudly
        host.engine.generate(GenRequest(agent_id="a1", task_id="t", system_prompt="", prompt="p",
                                        params=GenerationParams()))
    assert host.wake_engine() is True and host.wake_engine() is False
    assert host.measure() == {"available": True, "source": "simulated", "id": "sim-gpu-0",
                              "scope": "gpu", "used_mib": 700.0}

    class Bare:  # an engine with none of the optional methods: pynvml reads the Host's process
        name = "bare"

    host.engine = Bare()  # type: ignore[assignment]
    reading = host.measure()
    assert reading["available"] or reading["reason"]
    assert host.pause_engine() is False


def test_simulated_pressure_arrives_after_the_steps_the_engine_answered() -> None:
    engine = ScriptedEngine(EngineConfig(kind="scripted", device={"used_mib": {0: 700},
                                                                  "used_from_steps": 2}))
    req = GenRequest(agent_id="a1", task_id="t", system_prompt="", prompt="p",
                     params=GenerationParams())
    seen = []
    for _ in range(3):
        seen.append(engine.measure()["used_mib"])
        engine.generate(req)
    assert seen == [0.0, 0.0, 700.0]


def test_simulated_pressure_ends_after_used_for_s(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("agents.engines.scripted.time.monotonic", lambda: clock[0])
    engine = ScriptedEngine(EngineConfig(kind="scripted", device={"used_mib": {0: 700},
                                                                  "used_from_s": 1, "used_for_s": 2}))
    seen = []
    for t in (100.5, 101.0, 102.5, 103.0, 104.0):
        clock[0] = t
        seen.append(engine.measure()["used_mib"])
    assert seen == [0.0, 700.0, 700.0, 0.0, 0.0]


def test_readings_of_one_gpu_count_each_id_once_and_a_missing_one_spoils_the_sum() -> None:
    from agents.engines.gpumem import total_used

    shared = [{"available": True, "id": "pid-7", "used_mib": u} for u in (900.0, 950.0)]
    assert total_used(shared) == 950.0  # one engine read twice a moment apart: its highest
    hosts = [{"available": True, "id": f"pid-{i}", "used_mib": 100.0} for i in range(3)]
    assert total_used(hosts) == 300.0
    assert total_used([*hosts, {"available": False, "reason": "timeout"}]) is None
    assert total_used([]) is None


def test_the_slots_kv_goes_into_the_checkpoint_at_park_and_a_stale_copy_never_outlives_a_run(
    tmp_path: Path,
) -> None:
    host, store = make_host(tmp_path, None)
    host.park()
    kv = b"KV of a1's slot"
    store.write(store.read("a1")[0].model_copy(update={"kv_state": kv}), epoch=2)
    assert host.bind("a1", None, epoch=3)["kv_restored"]  # the engine took it into its slot
    host.run(make_tasks(1), headroom=0.5)
    assert store.read("a1")[0].kv_state is None, "the committed KV no longer matches the memory"
    parked = codec.decode(host.park())
    assert parked.kv_state == kv and store.read("a1")[0].kv_state == kv  # saved from the slot


class _KeepingEngine(ScriptedEngine):
    """The scripted engine keeping a copy of each snapshot it saved, as the llama.cpp engine does:
    the hot tier then carries a reference, which `load_state` answers None once the copy is gone."""

    def __init__(self, cfg: EngineConfig) -> None:
        super().__init__(cfg)
        self.kept: dict[bytes, bytes] = {}

    def save_state(self, agent_id: str) -> bytes | None:
        blob = super().save_state(agent_id)
        if blob is not None:
            self.kept[b"ref:" + agent_id.encode()] = blob
        return blob

    def kv_reference(self, blob: bytes) -> bytes | None:
        return next((ref for ref, kept in self.kept.items() if kept == blob), None)

    def load_state(self, agent_id: str, blob: bytes | None) -> bool | None:
        if blob is not None and blob.startswith(b"ref:"):
            if blob not in self.kept:
                super().load_state(agent_id, None)
                return None
            blob = self.kept[blob]
        return super().load_state(agent_id, blob)


def test_the_hot_tier_gets_a_reference_and_a_forgotten_one_restores_the_checkpoints_kv(
    tmp_path: Path,
) -> None:
    host, store = make_host(tmp_path, None)
    host.park()
    host.engine = engine = _KeepingEngine(host.settings.engine)
    kv = b"KV of a1's slot" * 100
    store.write(store.read("a1")[0].model_copy(update={"kv_state": kv}), epoch=2)
    host.bind("a1", None, epoch=3)
    host.run(make_tasks(1), headroom=0.5)
    hot = host.park()
    assert codec.decode(hot).kv_state == b"ref:a1", "the hot tier carries the reference only"
    assert store.read("a1")[0].kv_state == kv, "the checkpoint has the whole KV"
    info = host.bind("a1", hot, epoch=4)
    assert info["kv_restored"] and not info["kv_fallback"] and engine.save_state("a1") == kv
    assert host.agent is not None and host.agent.kv_state is None  # the slot holds it
    host.release()
    engine.kept.clear()  # evicted, or the engine restarted
    info = host.bind("a1", hot, epoch=5)
    assert info["kv_restored"] and info["kv_fallback"] and engine.save_state("a1") == kv


def test_a_kv_state_over_the_cap_is_dropped_with_an_event(tmp_path: Path) -> None:
    host, store = make_host(tmp_path, None)
    host.park()
    big = b"x" * (host.settings.engine.kv_max_bytes + 1)
    store.write(store.read("a1")[0].model_copy(update={"kv_state": big}), epoch=2)
    host.bind("a1", None, epoch=3)
    host.events.drain()
    assert codec.decode(host.park()).kv_state is None
    (dropped,) = [e for e in host.events.drain() if e["event"] == "agent.kv_dropped"]
    assert dropped["bytes"] == len(big)


def test_the_tasks_pattern_reaches_the_monitor(tmp_path: Path) -> None:
    host, _ = make_host(tmp_path, None)
    shaped = [(Task(task_id="ok", agent_id="a1", prompt="2+2?", kind="answer", expected="4",
                    pattern=r"^\d+$"), None),
              (Task(task_id="bad", agent_id="a1", prompt="3+3?", kind="answer", expected="6",
                    pattern=r"^[A-Z][a-z]+$"), None)]
    outcomes = {o.task.task_id: o.result for o in host.run(shaped, headroom=0.5)}
    assert outcomes["ok"].status is TaskStatus.SUCCEEDED
    assert outcomes["bad"].status is TaskStatus.FAILED and "contract" in outcomes["bad"].error


def test_a_carried_task_brings_its_attempt_and_tiers_to_a_fresh_monitor(tmp_path: Path) -> None:
    """A task that used tier 1 twice (its carry says so) escalates to tier 2 on a Host whose
    monitor never saw it (a restarted monitor, or a migrated task)."""
    from pool.runtime.host import Carry

    host, _ = make_host(tmp_path, "garbage")
    seen: list[tuple[int, tuple[int, ...]]] = []
    fresh = Monitor(host.settings.health, host.settings.recovery, clock=lambda: 0.0)

    def assess(agent_id: str, items: list) -> list:
        seen.extend((attempt, sig.tiers_used) for _, _, attempt, sig in items)
        return fresh.assess(agent_id, items)

    host.assess = assess
    carry = Carry(params=GenerationParams(), attempt=2, tiers=(1, 1))
    host.run([(Task(task_id="t", agent_id="a1", prompt="p"), carry)], headroom=0.5)
    assert seen[0] == (2, (1, 1))
    assert seen[1][1] == (1, 1, 2), "the first decision escalated to tier 2 (compress)"


def test_a_run_reports_the_agents_state_when_it_ended(tmp_path: Path) -> None:
    host, _ = make_host(tmp_path, "permanent")  # every task fails at once: the agent ends DEGRADED
    outcomes = host.run(make_tasks(2), headroom=0.5)
    assert host.agent is not None and host.agent.state is AgentState.DEGRADED
    assert [o.agent_state for o in outcomes] == [AgentState.DEGRADED] * 2


def test_each_transition_of_a_run_is_reported_as_it_happens(tmp_path: Path) -> None:
    host, _ = make_host(tmp_path, "permanent")  # retried (RECOVERING), then failed (DEGRADED)
    seen: list[tuple[str, AgentState, AgentState]] = []
    host.on_state = lambda agent_id, state: seen.append((agent_id, state, host.agent.state))
    host.run(make_tasks(1), headroom=0.5)
    assert {a for a, _, _ in seen} == {"a1"}
    assert all(reported is now for _, reported, now in seen), "reported after the move, not before"
    states = [s for _, s, _ in seen]
    assert states[:2] == [AgentState.RUNNING, AgentState.RECOVERING] and states[-1] is AgentState.DEGRADED
    host.on_state = lambda agent_id, state: seen.append(("bind/park", state, state))
    host.park()
    assert seen[-1][0] == "a1", "parking is not a run's transition: the manager knows it"


def test_each_step_of_a_task_is_announced_before_the_engine_runs_it(tmp_path: Path) -> None:
    """The task a Host says it starts is the one its engine runs next: a Host that dies there
    is charged to that task alone."""
    host, _ = make_host(tmp_path, "permanent")  # each task is retried: two steps per task
    told: list[tuple[str, str]] = []
    engine = host.engine
    real = engine.generate

    def generate(req: GenRequest) -> Any:
        assert told[-1] == ("a1", req.task_id), "announced before its engine call"
        return real(req)

    engine.generate = generate  # type: ignore[method-assign]
    host.on_task = lambda agent_id, task_id: told.append((agent_id, task_id))
    tasks = make_tasks(2)
    host.run(tasks, headroom=0.5)
    ids = [t.task_id for t, _ in tasks]
    assert [t for _, t in told][:2] == ids and len(told) > len(ids), "every step, every task"
