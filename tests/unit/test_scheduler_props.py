"""The scheduler across random event sequences (Hypothesis), without Ray: Hosts answer its
actions in any order and in every way they can (done, lost, stalled, failed, refused by a
fence), tasks arrive, readings and mid-batch reports come. After every step:

- a bind never takes its GPU over the VRAM limit, and no GPU holds more residents than slots;
- no agent is on two Hosts, and a resident agent's entry names its Host;
- every state change is a move of the transition table (an illegal one raises);
- every submitted task is in exactly one place: queued, in a batch in flight, held while its
  agent is fenced, or answered once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.config import PoolConfig
from agents.errors import FaultClass
from agents.models import GenerationParams, Task, TaskResult, TaskStatus
from agents.state import TRANSITIONS, AgentState
from pool.control import actions as act
from pool.control.budget import VramLedger
from pool.control.facts import HostSlot
from pool.control.scheduler import Scheduler
from pool.runtime.host import Carry, Outcome

GPUS, SLOTS, AGENTS = 2, 2, 6
ANSWERS = ("ok",) * 8 + ("lost", "stalled", "failed", "stale")
answer = st.tuples(st.just("answer"), st.integers(0, 50), st.sampled_from(ANSWERS), st.integers(0, 9))

ops = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.integers(0, AGENTS - 1)), answer, answer, answer,
    st.tuples(st.just("reading"), st.integers(0, GPUS - 1), st.integers(0, 9000)),
    st.tuples(st.just("report"), st.integers(0, AGENTS - 1), st.sampled_from(list(AgentState))),
), min_size=20, max_size=150)


class _World:
    """The scheduler and everything outside it: Hosts that answer, a clock."""

    def __init__(self, task_deaths: int) -> None:
        ledger = VramLedger(8192, 0.85, 1000, GPUS, SLOTS, agent_mib=2000)
        self.s = Scheduler(PoolConfig(task_deaths=task_deaths, batch_per_agent=2), 2, ledger)
        self.s.add_hosts(HostSlot(f"h{g}{k}", g, f"n{g}") for g in range(GPUS) for k in range(SLOTS))
        self.s.registry.add_rows((f"a{i}", i % 10, "") for i in range(AGENTS))
        self.now, self.tasks, self.inflight = 0.0, 0, []  # type: ignore[var-annotated]
        self.moves: list[tuple[AgentState, AgentState]] = []
        registry, set_state = self.s.registry, self.s.registry.set_state

        def recorded(agent_id: str, state: AgentState) -> None:
            self.moves.append((registry.get(agent_id).state, state))
            set_state(agent_id, state)

        registry.set_state = recorded  # type: ignore[method-assign]

    def step(self, op: tuple[Any, ...]) -> None:
        self.now += 0.1
        match op:
            case ("submit", i):
                self.s.book.submit([(Task(task_id=f"t{self.tasks}", agent_id=f"a{i}", prompt="p"), None)])
                self.tasks += 1
            case ("answer", k, how, seed) if self.inflight:
                self._answer(self.inflight.pop(k % len(self.inflight)), how, seed)
            case ("reading", gpu, mib):
                self.s.update(act.Reading(gpu, float(mib), None), self.now)
            case ("report", i, state):
                self.s.update(act.StateReported(f"a{i}", self.s.registry.get(f"a{i}").dispatch,
                                                state), self.now)
        actions = self.s.schedule(self.now)
        for a in actions:
            if isinstance(a, act.Bind):
                gpu = self.s.host(a.host).gpu
                used = self.s.ledger.used(self.s.residents_on(gpu), gpu)
                assert used <= self.s.ledger.limit_mib, f"{a.agent} takes gpu {gpu} to {used} MiB"
        answered = act.Bind | act.Park | act.Run | act.Fence | act.Revive  # the rest: no answer
        self.inflight += [a for a in actions if isinstance(a, answered)]

    def _answer(self, a: Any, how: str, seed: int) -> None:
        s, now = self.s, self.now
        match a:
            case act.Bind() if how in ("ok", "stale"):
                s.update(act.Bound(a.host, a.agent, a.after + 1, {"state": "idle"}, 0.0, hot=False), now)
            case act.Park() if how in ("ok", "stale"):
                s.update(act.Parked(a.host, a.agent, "ref", a.why), now)
            case act.Run() if how == "ok":
                s.update(act.Ran(a.host, a.agent, a.dispatch, self._outcomes(a, seed), (), seed), now)
            case act.Bind() | act.Park() | act.Run() if how == "lost":
                s.update(act.HostLost(a.host, a.batch if isinstance(a, act.Run) else ()), now)
            case act.Bind() | act.Park() | act.Run() if how == "stalled":
                batch = a.batch if isinstance(a, act.Run) else ()
                epoch = a.epoch if isinstance(a, act.Run) else s.registry.get(a.agent).epoch
                s.update(act.HostStalled(a.host, a.agent, type(a).__name__.lower(), epoch, batch), now)
                self.inflight.append(("reclaim", a.host, a.agent))
            case act.Run() if how == "stale":
                s.update(act.CallFailed(a.host, a.agent, "run", "StaleEpoch", a.batch, True, a.epoch), now)
            case act.Bind() | act.Park() | act.Run():
                batch = a.batch if isinstance(a, act.Run) else ()
                s.update(act.CallFailed(a.host, a.agent, type(a).__name__.lower(), "boom", batch), now)
            case act.Fence():
                s.update(act.Fenced(a.agent, a.after + 1 if how != "failed" else 0, "disk full"), now)
            case act.Revive():
                s.update(act.Revived(a.host), now)
            case ("reclaim", host, agent):
                s.update(act.Reclaimed(host, agent, ""), now)

    @staticmethod
    def _outcomes(a: act.Run, seed: int) -> tuple[Outcome, ...]:
        out = []
        for n, (task, _) in enumerate(a.batch):
            pick = (seed + n) % 5
            if pick == 0:  # handed back to migrate
                carry = Carry(params=GenerationParams(), attempt=2, tiers=(2,), host_changed=True)
                out.append(Outcome(task, None, carry, FaultClass.OOM, agent_state=AgentState.RECOVERING))
                continue
            state = [AgentState.IDLE, AgentState.DEGRADED, AgentState.IDLE, AgentState.FAILED][pick - 1]
            status = TaskStatus.FAILED if state is AgentState.FAILED else TaskStatus.SUCCEEDED
            result = TaskResult(task_id=task.task_id, agent_id=task.agent_id,
                                agent_state=state.value, status=status)
            out.append(Outcome(task, result, agent_state=state))
        return tuple(out)

    def check(self) -> None:
        s = self.s
        resident = [h.agent for h in s.hosts if h.agent]
        assert len(resident) == len(set(resident)), f"an agent on two Hosts: {resident}"
        for h in s.hosts:
            if h.agent and h.call != "stalled":
                assert s.registry.get(h.agent).host == h.host_id
        for gpu in range(GPUS):
            assert len(s.residents_on(gpu)) <= s.ledger.slots_per_gpu
        for before, after in self.moves:
            assert after in TRANSITIONS[before].values(), f"{before} -> {after} is not in the table"
        place: Counter[str] = Counter(r.task_id for r in s.book.results)
        for entry in s.registry.entries.values():
            place.update(t.task_id for t, _ in entry.queue)
            place.update(t.task_id for t, _ in entry.held)
        for a in self.inflight:
            if isinstance(a, act.Run):
                place.update(t.task_id for t, _ in a.batch)
        lost = [f"t{i}" for i in range(self.tasks) if place[f"t{i}"] != 1]
        assert not lost, f"tasks not in exactly one place: {[(t, place[t]) for t in lost]}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.integers(1, 3))
def test_random_event_sequences_keep_the_budget_the_slots_the_table_and_every_task(
    steps: list[tuple[Any, ...]], task_deaths: int
) -> None:
    world = _World(task_deaths)
    for op in steps:
        world.step(op)
        world.check()
