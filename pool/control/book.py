"""The agents' book: every agent's facts (`pool.control.registry`), their queues, the results
they produce and the Host deaths charged to them or their tasks. Pure; owned by the scheduler.

An agent's state changes here only, and only through the transition table (`Registry.move`): a
state a Host reports that the table cannot reach in one move is an event
(`pool.state_unreachable`), not a state. A FAILED agent is recorded once: `fail` returns the
`FailAgent` action (the monitor's table) the first time only.
"""

from __future__ import annotations

from collections.abc import Iterable

from agents.config import PoolConfig
from agents.events import EventSink
from agents.models import Task, TaskResult, TaskStatus
from agents.state import RESIDENT, TRANSITIONS, AgentState, Event
from pool.control import actions as act
from pool.control.actions import Item
from pool.control.deaths import count_deaths, forget
from pool.control.registry import Registry


class AgentBook:
    def __init__(self, cfg: PoolConfig, intensity: int, registry: Registry, events: EventSink) -> None:
        self.cfg, self.intensity, self.registry, self.events = cfg, intensity, registry, events
        self.results: list[TaskResult] = []
        self.task_deaths: dict[str, int] = {}  # task_id -> Hosts lost running it (pool.control.deaths)

    # -- work -------------------------------------------------------------------------------
    def submit(self, items: Iterable[Item]) -> None:
        for task, carry in items:
            if task.agent_id not in self.registry:
                self.result(task, TaskStatus.REJECTED, f"unknown agent {task.agent_id}")
            else:
                self.enqueue(task.agent_id, [(task, carry)])

    def enqueue(self, agent_id: str, items: list[Item], front: bool = False) -> None:
        """Queue work (at the front: work handed back); a non-resident agent is wanted."""
        if not items:
            return
        entry = self.registry.get(agent_id)
        if entry.state is AgentState.FAILED:
            for task, _ in items:
                self.result(task, TaskStatus.FAILED, "agent is FAILED; release it first")
            return
        if front:
            entry.queue.extendleft(reversed(items))
        else:
            entry.queue.extend(items)
        if entry.host is None:
            self.registry.want(agent_id)

    def queued(self) -> int:
        return sum(len(e.queue) for e in self.registry.entries.values())

    def result(self, task: Task, status: TaskStatus, error: str) -> None:
        self.results.append(TaskResult(task_id=task.task_id, agent_id=task.agent_id,
                                       status=status, error=error))

    # -- state ------------------------------------------------------------------------------
    def move(self, agent_id: str, event: Event) -> None:
        self.registry.move(agent_id, event)

    def follow(self, agent_id: str, state: AgentState) -> None:
        """Take a resident state a Host reports, by the table's one move there (module doc)."""
        current = self.registry.get(agent_id).state
        if state is current:
            return
        # DORMANT and FAILED are the pool's to decide (a park, a lost Host, a batch's results)
        resident = state in RESIDENT and current in RESIDENT
        event = next((e for e, to in TRANSITIONS[current].items() if to is state), None) if resident else None
        if event is None:
            self.events.emit("pool.state_unreachable", agent_id=agent_id, state=current.value,
                             reported=state.value)
        else:
            self.move(agent_id, event)

    def to_dormant(self, agent_id: str) -> None:
        """Back to its committed checkpoint (a lost, stalled or refused Host)."""
        entry = self.registry.get(agent_id)
        entry.host, entry.hot, entry.dispatch = None, None, 0
        if entry.state in RESIDENT:
            self.move(agent_id, Event.HOST_LOST)

    def fail(
        self, agent_id: str, reason: str, batch: list[Item], verify: bool = False
    ) -> list[act.FailAgent]:
        """Tier 3: the agent goes FAILED; its pending tasks are dead-lettered with the reason."""
        entry = self.registry.get(agent_id)
        entry.host, entry.hot, entry.move, entry.dispatch = None, None, None, 0
        self.registry.unwant(agent_id)
        first = entry.state is not AgentState.FAILED
        if first:
            self.move(agent_id, Event.FAIL)
        pending = batch + list(entry.queue)
        entry.queue.clear()
        for task, _ in pending:
            self.result(task, TaskStatus.FAILED, f"agent failed: {reason}"[:500])
        self.events.emit("pool.agent_failed", agent_id=agent_id, reason=reason[:300],
                         dead_lettered=len(pending))
        return [act.FailAgent(agent_id, reason, verify)] if first else []

    def released(self, agent_id: str, epoch: int) -> None:
        """A person released a FAILED agent (its checkpoint rewritten DORMANT at `epoch`)."""
        entry = self.registry.get(agent_id)
        entry.epoch, entry.crashes = epoch, 0
        self.move(agent_id, Event.RELEASE)

    # -- Host deaths ------------------------------------------------------------------------
    def charge_tasks(self, agent_id: str, batch: list[Item], running: str = "") -> list[Item]:
        """One more death for the task `running` (the one its Host said it was running), else
        for each task in flight; those at `pool.task_deaths` fail alone. The rest, in order."""
        limit, ids = self.cfg.task_deaths, [t.task_id for t, _ in batch]
        self.task_deaths, doomed = count_deaths(self.task_deaths, [running] if running in ids else ids, limit)
        for task, _ in batch:
            if task.task_id in doomed:
                self.result(task, TaskStatus.FAILED, f"its Host died {limit} times running it")
                self.events.emit("pool.task_killed_hosts", agent_id=agent_id,
                                 task_id=task.task_id, deaths=limit)
        return [item for item in batch if item[0].task_id not in doomed]

    def charge_agent(self, agent_id: str) -> list[act.FailAgent] | None:
        """One more death outside a batch; past `recovery.intensity` the agent fails (its
        checkpoint verified: bad versions quarantined, good ones kept for a release)."""
        entry = self.registry.get(agent_id)
        entry.crashes += 1
        if entry.crashes <= self.intensity:
            return None
        reason = f"its Host died {entry.crashes} times in a row binding or parking it"
        return self.fail(agent_id, reason, [], verify=True)

    def went_through(self, agent_id: str, tasks: Iterable[Task]) -> None:
        """A batch came back: the agent's crash streak and its tasks' death counts start again."""
        self.registry.get(agent_id).crashes = 0
        if self.task_deaths:
            self.task_deaths = forget(self.task_deaths, (t.task_id for t in tasks))
