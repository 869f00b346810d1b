"""The scheduler without Ray: `schedule(now)` hands out actions, `update(event, now)` folds what
the Hosts answered. Agent states follow the Hosts' reports through the transition table
(DEGRADED stays while resident, RECOVERING shows until a migrating agent is parked, a mid-batch
report counts only for the batch in flight); lost and stalled Hosts, stale epochs and failed
agents each change the facts once."""

from __future__ import annotations

from agents.config import PoolConfig
from agents.errors import FaultClass
from agents.models import GenerationParams, Task, TaskResult, TaskStatus
from agents.state import AgentState
from pool.control import actions as act
from pool.control.budget import VramLedger
from pool.control.facts import HostSlot
from pool.control.scheduler import Scheduler
from pool.runtime.host import Carry, Outcome

AID = "a1"


def _sched(hosts: int = 1, agents: tuple[str, ...] = (AID,), **cfg: object) -> Scheduler:
    s = Scheduler(PoolConfig(**cfg), 3, VramLedger(8192, 0.85, 600, 1, hosts, agent_mib=320))  # type: ignore[arg-type]
    s.add_hosts(HostSlot(f"h{i}", 0, "n0") for i in range(hosts))
    s.registry.add_rows((a, 5, "") for a in agents)
    return s


def _task(i: int, agent: str = AID) -> Task:
    return Task(task_id=f"t{i}", agent_id=agent, prompt="p")


def _result(i: int, state: AgentState, ok: bool = True) -> TaskResult:
    return TaskResult(task_id=f"t{i}", agent_id=AID, agent_state=state.value,
                      status=TaskStatus.SUCCEEDED if ok else TaskStatus.FAILED)


def _bound(s: Scheduler, *tasks: Task) -> act.Run:
    """Submit `tasks`, bind the agent (the Host answers), and return the batch dispatched."""
    s.book.submit([(t, None) for t in tasks])
    [bind] = s.schedule(0.0)
    assert isinstance(bind, act.Bind)
    s.update(act.Bound(bind.host, bind.agent, bind.after + 1, {"state": "idle", "tier": "disk"},
                       0.01, hot=False), 0.0)
    [run] = s.schedule(0.0)
    assert isinstance(run, act.Run)
    return run


def _events(s: Scheduler) -> list[str]:
    return [e["event"] for e in s.events.drain()]


def test_a_task_binds_its_agent_then_runs_and_its_result_is_kept() -> None:
    s = _sched()
    run = _bound(s, _task(0))
    assert s.registry.get(AID).state is AgentState.RUNNING and s.host("h0").busy
    s.update(act.Ran("h0", AID, run.dispatch, (Outcome(_task(0), _result(0, AgentState.IDLE),
                                                       agent_state=AgentState.IDLE),), (), 7), 1.0)
    assert s.registry.get(AID).state is AgentState.IDLE and not s.host("h0").busy
    assert [r.task_id for r in s.book.results] == ["t0"] and s.host("h0").kv_tokens == 7
    assert s.schedule(2.0) == [], "nothing left to do"


def test_a_degraded_agent_stays_degraded_while_resident_and_idle() -> None:
    s = _sched()
    run = _bound(s, _task(0))
    s.update(act.Ran("h0", AID, run.dispatch, (Outcome(_task(0), _result(0, AgentState.DEGRADED),
                                                       agent_state=AgentState.DEGRADED),), (), 0), 1.0)
    assert s.registry.get(AID).state is AgentState.DEGRADED
    assert s.registry.counts()["degraded"] == 1, "what `selfheal status` and the gauge count"


def test_a_mid_batch_report_counts_for_the_batch_in_flight_only() -> None:
    s = _sched()
    run = _bound(s, _task(0))
    s.update(act.StateReported(AID, run.dispatch + 1, AgentState.RECOVERING), 0.5)
    assert s.registry.get(AID).state is AgentState.RUNNING, "another batch's report is dropped"
    s.update(act.StateReported(AID, run.dispatch, AgentState.RECOVERING), 0.5)
    assert s.registry.counts()["recovering"] == 1, "RECOVERING shows while the batch runs"
    s.update(act.Ran("h0", AID, run.dispatch, (Outcome(_task(0), _result(0, AgentState.IDLE),
                                                       agent_state=AgentState.IDLE),), (), 0), 1.0)
    s.update(act.StateReported(AID, run.dispatch, AgentState.RECOVERING), 1.5)  # late
    assert s.registry.get(AID).state is AgentState.IDLE


def test_an_agent_handing_tasks_back_shows_recovering_until_parked_then_moves() -> None:
    s = _sched(hosts=2)
    run = _bound(s, _task(0))
    carry = Carry(params=GenerationParams(), attempt=2, tiers=(2, 2), host_changed=True)
    moved = Outcome(_task(0), None, carry, FaultClass.OOM, agent_state=AgentState.RECOVERING)
    s.update(act.Ran(run.host, AID, run.dispatch, (moved,), (), 0), 1.0)
    assert s.registry.get(AID).state is AgentState.RECOVERING
    [park] = s.schedule(1.0)
    assert isinstance(park, act.Park) and park.why.startswith("tier 2: oom")
    s.update(act.Parked(park.host, AID, "ref", park.why), 1.5)
    assert s.registry.get(AID).state is AgentState.DORMANT and s.registry.get(AID).queue
    [bind] = s.schedule(2.0)
    assert isinstance(bind, act.Bind) and bind.host != run.host and bind.hot == "ref"
    s.update(act.Bound(bind.host, AID, 9, {"state": "idle", "tier": "hot"}, 0.01, hot=True), 3.0)
    migrated = [e for e in s.events.drain() if e["event"] == "pool.migrated"]
    assert [(e["src_host"], e["dst_host"], e["unavailable_s"]) for e in migrated] == [
        (run.host, bind.host, 2.0)]


def test_failed_is_recorded_once_and_its_tasks_are_dead_lettered() -> None:
    s = _sched()
    run = _bound(s, _task(0), _task(1))
    s.update(act.Ran("h0", AID, run.dispatch, (Outcome(_task(0), _result(0, AgentState.FAILED, False),
                                                       agent_state=AgentState.FAILED),), (), 0), 1.0)
    actions = s.schedule(1.0)
    assert [type(a) for a in actions] == [act.Release, act.FailAgent]
    assert s.registry.get(AID).state is AgentState.FAILED and s.host("h0").agent is None
    s.book.submit([(_task(2), None)])  # dead-lettered: t1 queued, t2 sent to a FAILED agent
    assert [(r.task_id, r.status) for r in s.book.results] == [
        ("t0", TaskStatus.FAILED), ("t1", TaskStatus.FAILED), ("t2", TaskStatus.FAILED)]
    assert not [a for a in s.schedule(2.0) if isinstance(a, act.FailAgent)], "recorded once"


def test_a_lost_host_requeues_its_batch_and_the_agent_moves_to_another_host() -> None:
    s = _sched(hosts=2)
    run = _bound(s, _task(0))
    s.update(act.HostLost(run.host, run.batch), 1.0)
    assert s.registry.get(AID).state is AgentState.DORMANT and s.host(run.host).reviving
    assert s.book.task_deaths == {"t0": 1}
    actions = s.schedule(1.0)
    assert {type(a) for a in actions} == {act.Revive, act.CheckNode, act.Bind}
    [bind] = [a for a in actions if isinstance(a, act.Bind)]
    assert bind.host != run.host, "never bound to a Host that is not answering yet"
    s.update(act.Revived(run.host), 2.0)
    assert not s.host(run.host).reviving


def _answer(s: Scheduler, now: float) -> list[act.Action]:
    """Schedule; revived Hosts answer at once, binds succeed. The other actions."""
    out = []
    for a in s.schedule(now):
        if isinstance(a, act.Revive):
            s.update(act.Revived(a.host), now)
        elif isinstance(a, act.Bind):
            s.update(act.Bound(a.host, a.agent, a.after + 1, {"state": "idle"}, 0.0, hot=False), now)
        out.append(a)
    return out


def test_a_task_that_kills_its_host_fails_alone_at_the_limit() -> None:
    s = _sched(hosts=2, task_deaths=2)
    run = _bound(s, _task(0))
    s.update(act.HostLost(run.host, run.batch), 1.0)
    _answer(s, 1.0)
    [run] = [a for a in _answer(s, 2.0) if isinstance(a, act.Run)]
    s.update(act.HostLost(run.host, run.batch), 2.0)
    assert [(r.task_id, r.status) for r in s.book.results] == [("t0", TaskStatus.FAILED)]
    assert s.registry.get(AID).state is not AgentState.FAILED, "its agent goes on"


def test_a_host_death_mid_batch_is_charged_to_the_task_it_was_running_only() -> None:
    """batch_per_agent > 1: the Host says which task it starts; a death is that task's alone, so
    a poison task fails at the limit and its batch mates go on uncharged. A report from an older
    batch of the agent is not this batch's."""
    s = _sched(hosts=2, task_deaths=2, batch_per_agent=3)
    run = _bound(s, _task(0), _task(1), _task(2))
    s.update(act.TaskStarted(AID, run.dispatch - 1, "t0"), 0.5)  # late, from an older batch
    s.update(act.TaskStarted(AID, run.dispatch, "t1"), 0.5)
    s.update(act.HostLost(run.host, run.batch), 1.0)
    assert s.book.task_deaths == {"t1": 1}
    _answer(s, 1.0)
    [run] = [a for a in _answer(s, 2.0) if isinstance(a, act.Run)]
    assert [t.task_id for t, _ in run.batch] == ["t0", "t1", "t2"], "requeued in their order"
    s.update(act.TaskStarted(AID, run.dispatch, "t1"), 2.5)
    s.update(act.HostLost(run.host, run.batch), 3.0)
    assert [(r.task_id, r.status) for r in s.book.results] == [("t1", TaskStatus.FAILED)]
    assert s.book.task_deaths == {}, "t0 and t2 were never charged"
    assert [t.task_id for t, _ in s.registry.get(AID).queue] == ["t0", "t2"]


def test_a_death_with_no_report_of_the_task_running_is_charged_to_the_whole_batch() -> None:
    s = _sched(hosts=2, batch_per_agent=2)
    run = _bound(s, _task(0), _task(1))
    s.update(act.HostLost(run.host, run.batch), 1.0)
    assert s.book.task_deaths == {"t0": 1, "t1": 1}, "a lost report never spares a poison task"


def test_a_stalled_run_is_fenced_requeued_elsewhere_and_its_late_answer_discarded() -> None:
    s = _sched(hosts=2)
    run = _bound(s, _task(0), _task(1))
    s.update(act.HostStalled(run.host, AID, "run", run.epoch, run.batch), 1.0)
    h = s.host(run.host)
    assert h.busy and h.reviving and h.agent is None
    [fence] = s.schedule(1.0)
    assert fence == act.Fence(AID, run.epoch)
    assert [t.task_id for t, _ in s.registry.get(AID).queue] == ["t1"], "t0 held until fenced"
    s.update(act.Fenced(AID, run.epoch + 1), 1.5)
    entry = s.registry.get(AID)
    assert [t.task_id for t, _ in entry.queue] == ["t0", "t1"] and entry.avoid == run.host
    assert entry.state is AgentState.DORMANT and entry.epoch == run.epoch + 1
    [bind] = s.schedule(2.0)
    assert isinstance(bind, act.Bind) and bind.host != run.host and bind.after == run.epoch + 1
    s.update(act.Reclaimed(run.host, AID, ""), 3.0)
    assert not h.busy and not h.reviving and s.book.results == []
    assert _events(s)[-1] == "pool.zombie_discarded"


def test_a_fence_that_cannot_be_written_fails_the_agent_with_its_held_batch() -> None:
    s = _sched(hosts=2)
    run = _bound(s, _task(0))
    s.update(act.HostStalled(run.host, AID, "run", run.epoch, run.batch), 1.0)
    s.schedule(1.0)
    s.update(act.Fenced(AID, 0, "disk full"), 1.5)
    assert s.registry.get(AID).state is AgentState.FAILED
    assert [(r.task_id, r.status) for r in s.book.results] == [("t0", TaskStatus.FAILED)]


def test_a_stale_epoch_from_the_agents_own_host_requeues_its_tasks() -> None:
    s = _sched()
    run = _bound(s, _task(0), _task(1), _task(2))
    s.update(act.CallFailed(run.host, AID, "run", "StaleEpoch", run.batch, stale=True,
                            epoch=run.epoch), 1.0)
    entry = s.registry.get(AID)
    assert [t.task_id for t, _ in entry.queue] == ["t0", "t1", "t2"], "no task is dropped"
    assert s.book.results == [] and entry.state is AgentState.DORMANT
    assert s.registry.next_demands(5) == [AID], "it is activated again, under a new epoch"
    assert act.Release(run.host) in s.schedule(1.0)


def test_a_fenced_zombies_stale_epoch_is_discarded() -> None:
    s = _sched()
    run = _bound(s, _task(0))
    s.registry.get(AID).epoch += 1  # fenced meanwhile
    s.update(act.CallFailed(run.host, AID, "run", "StaleEpoch", run.batch, stale=True,
                            epoch=run.epoch), 1.0)
    assert s.book.results == [] and not s.registry.get(AID).queue
    assert _events(s)[-1] == "pool.zombie_discarded"
    assert s.registry.get(AID).dispatch == run.dispatch, "the live batch's reports still count"


def test_a_crash_streak_binding_fails_the_agent_and_asks_to_verify_its_checkpoint() -> None:
    s = _sched(hosts=2)
    s.book.submit([(_task(0), None)])
    actions = s.schedule(0.0)
    failed: list[act.FailAgent] = []
    for i in range(4):  # recovery.intensity is 3 here: the fourth death in a row fails it
        [bind] = [a for a in actions if isinstance(a, act.Bind)]
        s.update(act.HostLost(bind.host), float(i))
        actions = s.schedule(float(i))
        for a in actions:
            if isinstance(a, act.Revive):
                s.update(act.Revived(a.host), float(i))
        failed += [a for a in actions if isinstance(a, act.FailAgent)]
        actions += s.schedule(float(i) + 0.5)
    assert s.registry.get(AID).state is AgentState.FAILED
    assert [(f.verify, "4 times in a row" in f.reason) for f in failed] == [(True, True)]
    assert [(r.task_id, r.status) for r in s.book.results] == [("t0", TaskStatus.FAILED)]


def test_memory_pressure_sheds_a_resident_and_no_batch_goes_to_the_pressed_gpu() -> None:
    s = _sched()
    run = _bound(s, _task(0), _task(1))
    s.update(act.Ran("h0", AID, run.dispatch, (Outcome(_task(0), _result(0, AgentState.IDLE),
                                                       agent_state=AgentState.IDLE),), (), 0), 1.0)
    s.update(act.Reading(0, 8000.0, None), 1.0)  # far more than the ledger accounts for
    actions = s.schedule(1.0)
    assert not [a for a in actions if isinstance(a, act.Run)], "a batch there would run out of memory"
    assert [a.why for a in actions if isinstance(a, act.Park)] == ["memory pressure"]


def test_a_plan_that_parks_waits_for_its_parks_before_planning_again() -> None:
    s = _sched(hosts=1, agents=("a", "b"))
    s.book.submit([(_task(0, "a"), None)])
    [bind] = s.schedule(0.0)
    s.update(act.Bound(bind.host, "a", 1, {"state": "idle"}, 0.0, hot=False), 0.0)
    [run] = s.schedule(0.0)
    done = Outcome(_task(0, "a"), _result(0, AgentState.IDLE), agent_state=AgentState.IDLE)
    s.update(act.Ran(run.host, "a", run.dispatch, (done,), (), 0), 1.0)
    s.book.submit([(_task(1, "b"), None)])
    [park] = s.schedule(1.0)
    assert isinstance(park, act.Park) and park.agent == "a"
    assert s.schedule(1.1) == [], "no second eviction for the same demand"
    s.update(act.Parked(park.host, "a", "ref"), 1.2)
    [bind] = s.schedule(1.3)
    assert isinstance(bind, act.Bind) and bind.agent == "b"


def test_a_just_bound_agent_runs_its_queued_work_before_anyone_plans_to_park_it() -> None:
    s = _sched(hosts=1, agents=("a", "b"))
    s.book.submit([(_task(0, "a"), None), (_task(1, "b"), None)])
    [bind] = s.schedule(0.0)
    s.update(act.Bound(bind.host, bind.agent, 1, {"state": "idle"}, 0.0, hot=False), 0.0)
    actions = s.schedule(0.0)
    assert [(type(a), a.agent) for a in actions] == [(act.Run, bind.agent)], \
        "parked before its task ran: bind and park again and again (thrash)"


def test_a_lost_node_is_retired_once_however_many_of_its_hosts_report_it() -> None:
    s = _sched(hosts=2)  # both Hosts on node n0
    run = _bound(s, _task(0))
    s.update(act.HostLost(run.host, run.batch), 1.0)
    s.update(act.NodeLost("n0"), 1.1)
    s.update(act.NodeLost("n0"), 1.2)  # a second Host's check found the node gone too
    assert all(h.dead for h in s.hosts)
    assert _events(s).count("pool.node_lost") == 1


def test_a_host_freed_by_its_park_takes_the_next_agent_while_other_parks_are_in_flight() -> None:
    # Two idle residents are parked for two waiting agents; the first Host whose park is done
    # binds the first in line at once instead of waiting for the slower park.
    s = _sched(hosts=2, agents=("a", "b", "c", "d"))
    runs: list[act.Run] = []
    for i, agent in enumerate(("a", "b")):
        s.book.submit([(_task(i, agent), None)])
        for action in s.schedule(0.0):
            if isinstance(action, act.Bind):
                s.update(act.Bound(action.host, agent, 1, {"state": "idle", "tier": "disk"},
                                   0.01, hot=False), 0.0)
            runs += [action] if isinstance(action, act.Run) else []
    runs += [a for a in s.schedule(0.0) if isinstance(a, act.Run)]
    for run in runs:  # both run their task and finish it: two idle residents
        s.update(act.Ran(run.host, run.agent, run.dispatch, (Outcome(
            run.batch[0][0], _result(0, AgentState.IDLE), agent_state=AgentState.IDLE),), (), 5), 0.5)
    assert len(runs) == 2
    s.book.submit([(_task(2, "c"), None), (_task(3, "d"), None)])
    parks = s.schedule(1.0)
    assert sorted(type(p).__name__ for p in parks) == ["Park", "Park"]
    s.update(act.Parked(parks[0].host, parks[0].agent, "ref", ""), 1.2)  # the other still parking
    [bind] = s.schedule(1.2)
    assert isinstance(bind, act.Bind) and (bind.host, bind.agent) == (parks[0].host, "c")
