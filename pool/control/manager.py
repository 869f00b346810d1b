"""The PoolManager actor: plan -> apply -> fold for thousands of agents on a few warm Hosts.

It owns the registry (one small entry per agent), the task queues, the residency of agents on
Hosts and the VRAM ledger. Each scheduling pass asks the pure planner (`pool.control.budget.plan`) which
dormant agents with work to activate and which residents to park, applies the plan to the Hosts
(park: commit + unbind, bytes kept in the object store as the hot tier; activate: bind a
checkpoint to a warm Host), dispatches queued tasks to resident agents in batches, and folds the
outcomes back: terminal results, migrations, lost Hosts, failed agents.

Its GPU side (engine base, reconciliation with device readings, pause/resume) is the
`pool.control.vram.VramControl` mixin, its read-only operator queries the
`pool.control.queries.Queries` mixin.
Its Hosts are created in `pool.control.slots` and called only through `pool.control.hosts.HostClient`, whose
replies (done, gone, failed, stalled) the manager folds; it never handles a Ray error of a Host.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agents.config import Settings
from agents.errors import FaultClass, StorageError
from agents.events import EventSink
from agents.models import AgentSpec, Task, TaskResult, TaskStatus
from agents.state import AgentState
from pool.control.budget import Demand, Resident, VramLedger, plan
from pool.control.deaths import count_deaths, forget
from pool.control.gate import start_gate
from pool.control.hosts import Done, Failed, Gone, Stalled
from pool.control.queries import Queries
from pool.control.registry import Registry, Unreachable
from pool.control.slots import Slot, create_hosts, locate, place_on_gpus, retire_node
from pool.control.vram import VramControl
from pool.driver.runs import split_namespace
from pool.ops.attach import AgentTrail
from pool.ops.metrics import PoolMetrics
from pool.runtime.actors import MONITOR_NAME, MonitorActor
from pool.runtime.host import Carry, Outcome
from pool.store.agent_table import AgentTable, committed_or_initial, initial_bytes
from pool.store.checkpoint import CheckpointStore

Item = tuple[Task, Carry | None]


@dataclass(frozen=True, slots=True)
class Move:
    """An agent on its way from one Host to another: unavailable until it is bound again."""

    src_host: str
    src_gpu: int
    since: float  # time.monotonic() when it stopped serving at src_host
    why: str
    off_gpu: bool  # memory pressure: it should land on another GPU


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000)  # type: ignore[call-overload]
class PoolManager(VramControl, Queries):
    def __init__(self, settings: Settings, store_root: str) -> None:
        self.settings = settings
        self.cfg = settings.pool
        self.store = CheckpointStore(Path(store_root), keep=self.cfg.keep_versions)
        self.store_root = store_root
        self.registry = Registry()
        self.table = AgentTable(Path(store_root))  # registered agents, durable; read back here
        self.registry.add_rows(self.table.load())
        self.queues: dict[str, deque[Item]] = {}
        self.slots: list[Slot] = []
        self.ledger = VramLedger.from_config(self.cfg)
        self.results: list[TaskResult] = []
        self.events = EventSink("pool-manager")
        self.metrics = PoolMetrics(self.cfg.namespace)
        self.trail = AgentTrail()  # recent events per agent, for `selfheal inspect`
        self.exclude: dict[str, str] = {}  # agent_id -> Host it must not return to (migration)
        self.crashes: dict[str, int] = {}  # agent_id -> Hosts lost under it outside a batch
        self.task_deaths: dict[str, int] = {}  # task_id -> Hosts lost running it (pool.control.deaths)
        self.reviving: set[str] = set()  # lost Hosts not yet answering again: no agent goes there
        self.moving: dict[str, Move] = {}  # agents migrating, until bound on their new Host
        # agent_id -> the number of its batch in flight: the Host's state reports carry it
        self.dispatches: dict[str, int] = {}
        self._dispatched = 0  # batches dispatched so far: each gets the next number
        self.paused: dict[int, str] = {}  # gpu -> how it was given back (`pause`)
        self.monitor = MonitorActor.options(  # type: ignore[attr-defined]
            name=MONITOR_NAME, namespace=self.cfg.namespace, lifetime="detached",
            get_if_exists=True, scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False),  # beside the manager
        ).remote(settings, store_root)  # its dead-letter table lives in the store
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []  # held: the loop keeps weak references
        self._peak: dict[int, tuple[int, float]] = {}
        self.boot = uuid.uuid4().hex  # a restarted manager starts empty: the driver feeds it again
        self.drained = time.monotonic()  # the driver's last drain: a pool nobody drains is reaped
        self.kept = False  # `--keep-pool`: the run ended and a person may inspect the pool

    # -- setup ----------------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        if not self.slots:
            ns = self.cfg.namespace
            # one pool creates its Hosts at a time; a namespace with no run id has a gate of its own
            gate = start_gate(split_namespace(ns)[0] or ns)
            await gate.acquire.remote(ns)
            try:
                self.slots, self.ledger = create_hosts(self.settings, self.store_root)
                infos = await locate(self.slots)
            finally:
                gate.release.remote(ns)
            place_on_gpus(self.slots, infos)
            self.events.emit("pool.started", hosts=len(self.slots), gpus=self.ledger.num_gpus,
                             nodes=len({i["node"] for i in infos}))
            self._restore_pause()
        if self._loop is None:
            loop = asyncio.get_running_loop()
            self._loop = loop.create_task(self._run_loop())
            self._background = [loop.create_task(self._learn_base()),
                                loop.create_task(self._reconcile_loop()),
                                loop.create_task(self._gauge_loop()),
                                loop.create_task(self._reap_loop())]
        return {"hosts": len(self.slots), "gpus": self.ledger.num_gpus}

    async def register(self, specs: list[AgentSpec]) -> int:
        """Add agents: one durable file of rows in the agent table per call, no checkpoint (the
        first is written when the agent is first committed). Returns how many were new."""
        rows = self.registry.new_rows(specs)
        await asyncio.to_thread(self.table.append, rows)  # durable before the agents exist
        new = self.registry.add_rows(rows)
        self.events.emit("pool.registered", agents=len(self.registry), new=new)
        return new

    async def submit(self, items: list[Item]) -> int:
        for task, carry in items:
            if task.agent_id not in self.registry:
                self._result(task, TaskStatus.REJECTED, f"unknown agent {task.agent_id}")
                continue
            self._enqueue(task.agent_id, (task, carry))
        self._wake.set()
        return len(items)

    def _enqueue(self, agent_id: str, item: Item, front: bool = False) -> None:
        entry = self.registry.get(agent_id)
        if entry.state is AgentState.FAILED:
            self._result(item[0], TaskStatus.FAILED, "agent is FAILED; release it first")
            return
        queue = self.queues.setdefault(agent_id, deque())
        queue.appendleft(item) if front else queue.append(item)
        if entry.host is None:
            self.registry.want(agent_id)

    def _result(self, task: Task, status: TaskStatus, error: str) -> None:
        self.results.append(TaskResult(task_id=task.task_id, agent_id=task.agent_id,
                                       status=status, error=error))

    # -- the loop: plan -> apply -> fold ----------------------------------------------------
    async def _run_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._schedule()
            except Exception as exc:  # keep the pool alive; the event says what broke
                self.events.emit("pool.schedule_error", error=repr(exc)[:300])
                await asyncio.sleep(0.05)
                self._wake.set()

    async def _schedule(self) -> None:
        if self.paused:  # the GPUs are given back: work waits for `resume`
            return
        free = sum(1 for s in self.slots if not s.busy)
        demands = self.registry.next_demands(max(1, free))
        if demands or self._over_limit():
            await self._apply(self._plan(demands))
        over = self._over_limit() if self.ledger.agent_mib else set()  # else: nothing to shed
        for slot in self.slots:
            if slot.agent and not slot.busy and self.queues.get(slot.agent):
                if slot.gpu in over:  # became idle while the pass ran: shed by the next pass,
                    self._wake.set()  # not sent a batch that could only run out of memory
                    continue
                self._dispatch(slot)

    def _plan(self, demands: list[str]) -> Any:
        residents = [
            Resident(s.agent, s.gpu, self.registry.get(s.agent).priority,
                     self.registry.get(s.agent).last_used, self.ledger.footprint(s.kv_tokens), s.busy,
                     bool(self.queues.get(s.agent)))
            for s in self.slots if s.agent
        ] + [Resident(f"<dead {s.host_id}>", s.gpu, 9, 0.0, 0, True, False)  # never placed on
             for s in self.slots if s.dead or (s.agent is None and s.host_id in self.reviving)]
        wanted = [Demand(a, self.registry.get(a).priority, self.ledger.agent_mib,
                         m.src_gpu if (m := self.moving.get(a)) and m.off_gpu else None)
                  for a in demands]
        return plan(residents, wanted, self.ledger)

    async def _apply(self, p: Any) -> None:
        by_agent = {s.agent: s for s in self.slots if s.agent}
        for a in p.shed:
            src = by_agent[a]
            why = (f"memory pressure: gpu {src.gpu} holds {self.ledger.extra(src.gpu)} MiB "
                   f"more than the ledger accounts for")
            if self.queues.get(a):  # it has work: it moves to another GPU
                self.moving[a] = Move(src.host_id, src.gpu, time.monotonic(), why, off_gpu=True)
        await asyncio.gather(*(self._park(by_agent[a], why="memory pressure" if a in p.shed else "")
                               for a in p.park))
        binds = []
        over = self._over_limit()  # a reading may have landed while the parks were awaited
        for placement in p.activate:
            slot = self._free_slot(placement.agent_id, placement.gpu)
            if slot is not None and placement.gpu not in over:  # else: left to the next pass
                slot.busy, slot.agent = True, placement.agent_id  # reserved before any await
                binds.append(self._activate(slot, placement.agent_id, time.perf_counter()))
        await asyncio.gather(*binds)
        self._note_residency()

    def _free_slot(self, agent_id: str, gpu: int) -> Slot | None:
        avoid = self.exclude.get(agent_id)
        free = [s for s in self.slots if s.gpu == gpu and s.agent is None and not s.busy
                and not s.dead and s.host_id not in self.reviving]
        preferred = [s for s in free if s.host_id != avoid]
        choice = preferred or free
        return choice[0] if choice else None

    async def _park(self, slot: Slot, why: str = "") -> None:
        agent_id = slot.agent
        assert agent_id is not None
        slot.busy, kept = True, False
        pressed = self.ledger.over_limit(self._residents_on(slot.gpu), slot.gpu)
        reply = await slot.host.park()
        if isinstance(reply, Stalled):
            self._spawn_stalled(slot, agent_id, reply, "park")
            return
        try:
            match reply:
                case Done(value=blob):
                    self._parked(slot, agent_id, blob, pressed, why)
                case Gone():
                    self._host_lost(slot, [])
                case Failed(error=error):  # a full disk, say: it stays resident, its commit intact
                    self.events.emit("pool.park_failed", agent_id=agent_id, host=slot.host_id,
                                     reason=error)
                    kept = True
        finally:
            slot.agent = None if slot.agent == agent_id and not kept else slot.agent
            slot.busy = False
        if kept:  # its queued work runs where it is; a full disk gets a moment before a retry
            asyncio.get_running_loop().call_later(0.5, self._wake.set)
            return
        if self.queues.get(agent_id):
            self.registry.want(agent_id)
        self._wake.set()  # a freed slot or a migrating agent: schedule again

    def _parked(self, slot: Slot, agent_id: str, blob: bytes, pressed: bool, why: str) -> None:
        if pressed:  # the GPU's reading stands until the next says this memory is free
            extra = self.ledger.extra(slot.gpu) + self.ledger.footprint(slot.kv_tokens)
            self.ledger = self.ledger.with_extra(slot.gpu, extra)
        entry = self.registry.get(agent_id)
        entry.hot = ray.put(blob)
        entry.host = None
        self._follow(agent_id, AgentState.DORMANT)  # PARK, from the state its Host reported
        self.events.emit("pool.parked", agent_id=agent_id, host=slot.host_id, gpu=slot.gpu,
                         why=why or "room for another agent")
        self.metrics.count("parks")

    async def _activate(self, slot: Slot, agent_id: str, started: float) -> None:
        """Bind `agent_id` on `slot`, reserved for it at `started` (perf_counter)."""
        entry = self.registry.get(agent_id)
        entry.epoch = self.store.next_epoch(agent_id, after=entry.epoch)  # above the store's fence
        self.registry.unwant(agent_id)
        entry.host = slot.host_id
        hot, entry.hot = entry.hot, None
        # Never committed: bound from its registry row, the durable tier's copy ("disk" below).
        row = None if hot is not None else initial_bytes(self.store, self.registry, agent_id)
        reply = await slot.host.bind(agent_id, hot if row is None else row, entry.epoch)
        if isinstance(reply, Stalled):
            self._spawn_stalled(slot, agent_id, reply, "bind")
            return
        try:
            if isinstance(reply, Gone):
                self._host_lost(slot, [])
                return
            if isinstance(reply, Failed):
                self._agent_failed(slot, agent_id, f"activation failed: {reply.error}")
                return
            info = reply.value
        finally:
            slot.busy = False
        if hot is not None and info["tier"] != "hot":  # the object was lost with its owner
            self.events.emit("pool.hot_miss", agent_id=agent_id)
        entry.last_used = time.monotonic()
        slot.kv_tokens = int(info.get("kv_tokens", 0))
        self.events.extend(info["events"])
        self._follow(agent_id, AgentState(info["state"]))
        self.events.emit("pool.activated", agent_id=agent_id, host=slot.host_id, gpu=slot.gpu,
                         epoch=entry.epoch, latency_s=round(time.perf_counter() - started, 6),
                         kv_restored=info["kv_restored"], tier="disk" if row else info["tier"])
        self.metrics.count("activations")
        move = self.moving.pop(agent_id, None)
        if move is not None:
            self.events.emit("pool.migrated", agent_id=agent_id, src_host=move.src_host,
                             src_gpu=move.src_gpu, dst_host=slot.host_id, dst_gpu=slot.gpu,
                             why=move.why, unavailable_s=round(time.monotonic() - move.since, 6))
            self.metrics.count("migrations")
        if entry.state is AgentState.FAILED:
            self._agent_failed(slot, agent_id, "agent was FAILED in its checkpoint")
        self._wake.set()

    def _dispatch(self, slot: Slot) -> None:
        assert slot.agent is not None
        queue = self.queues[slot.agent]
        batch = [queue.popleft() for _ in range(min(len(queue), self.cfg.batch_per_agent))]
        slot.busy = True
        self._follow(slot.agent, AgentState.RUNNING)  # START
        headroom = self.ledger.headroom(self._residents_on(slot.gpu), slot.gpu)
        self._dispatched += 1
        self.dispatches[slot.agent] = self._dispatched
        asyncio.get_running_loop().create_task(
            self._collect(slot, slot.agent, batch, headroom, self._dispatched))

    def report_state(self, agent_id: str, dispatch: int, state: str) -> None:
        """A Host's report of its agent's new state during batch `dispatch` (fire-and-forget):
        taken only while that batch is in flight, so a late report of an earlier batch, or of
        a Host fenced off since, never overwrites what the pool knows now."""
        if dispatch and self.dispatches.get(agent_id) == dispatch:
            self._follow(agent_id, AgentState(state))

    def _over_limit(self) -> set[int]:
        """GPUs holding more than their limit (a reconciliation found memory the ledger missed)."""
        return {g for g in range(self.ledger.num_gpus)
                if self.ledger.over_limit(self._residents_on(g), g)}

    def _residents_on(self, gpu: int) -> list[Resident]:
        return [Resident(s.agent, s.gpu, 0, 0.0, self.ledger.footprint(s.kv_tokens), s.busy, False)
                for s in self.slots if s.agent and s.gpu == gpu]

    async def _collect(
        self, slot: Slot, agent_id: str, batch: list[Item], headroom: float, dispatch: int = 0
    ) -> None:
        given = self.registry.get(agent_id).epoch  # the epoch its Host was bound with
        reply = await slot.host.run(agent_id, batch, headroom, dispatch)
        if dispatch:  # its reply (or silence) decides now: later state reports are stale
            self.dispatches.pop(agent_id, None)
        if isinstance(reply, Stalled):  # its agent moves on, the Host stays busy until it answers
            await self._stalled(slot, agent_id, batch, reply, "run")
            return
        try:
            match reply:
                case Done(value=(outcomes, events, kv_tokens)):
                    slot.kv_tokens = kv_tokens
                    self.events.extend(events)
                    why = self._fold(slot, agent_id, outcomes)
                    if why is not None:  # parked before the slot is free again: no park races it
                        await self._park(slot, why=why)
                case Gone():
                    self._host_lost(slot, batch)
                case Failed(stale=False, error=error):
                    self._agent_failed(slot, agent_id, f"host error: {error}", batch)
                case Failed() if self.registry.get(agent_id).epoch != given or slot.agent != agent_id:
                    # a zombie: the agent was fenced off this Host and lives on elsewhere
                    self.events.emit("pool.zombie_discarded", agent_id=agent_id, host=slot.host_id)
                case Failed():
                    self._requeue_stale(slot, agent_id, batch)
        finally:
            slot.busy = False
            self._wake.set()

    def _requeue_stale(self, slot: Slot, agent_id: str, batch: list[Item]) -> None:
        """The agent's own Host was refused by a fence above the epoch it was given: nothing of
        the batch is committed, so it runs again once the agent is bound above the fence."""
        slot.agent = None
        slot.host.release()
        entry = self.registry.get(agent_id)
        entry.host, entry.hot = None, None
        self.registry.set_state(agent_id, AgentState.DORMANT)
        for item in reversed(batch):
            self._enqueue(agent_id, item, front=True)  # and wanted again: a fresh activation
        self.events.emit("pool.stale_epoch_requeued", agent_id=agent_id, host=slot.host_id,
                         epoch=entry.epoch, requeued=len(batch))

    async def _stalled(
        self, slot: Slot, agent_id: str, batch: list[Item], stalled: Stalled, stage: str
    ) -> None:
        """Watchdog: a Host silent in `run`, `bind` or `park` for `watchdog_s`. Fence it off by
        epoch, re-activate its agent elsewhere, and discard whatever the Host says when (if
        ever) it answers. The slot stays busy (and out of every plan) until then."""
        slot.agent = None
        self.reviving.add(slot.host_id)  # unusable until it answers; the plan counts it taken
        self.events.emit("pool.host_stalled", host=slot.host_id, agent_id=agent_id, stage=stage,
                         after_s=self.cfg.watchdog_s, requeued=len(batch))
        entry = self.registry.get(agent_id)
        try:
            entry.epoch = await asyncio.to_thread(self._fence, agent_id, entry.epoch)
        except StorageError as exc:
            self._agent_failed(None, agent_id, f"cannot fence a stalled Host: {exc}", batch)
        else:
            entry.host, entry.hot = None, None
            self.registry.set_state(agent_id, AgentState.DORMANT)
            self.exclude[agent_id] = slot.host_id
            for item in reversed(batch):
                self._enqueue(agent_id, item, front=True)
            if self.queues.get(agent_id):  # it has work: unavailable until bound elsewhere
                self.moving[agent_id] = Move(slot.host_id, slot.gpu, time.monotonic(),
                                             "its Host stalled", False)
                self.registry.want(agent_id)
        self._wake.set()
        late = await stalled.answer
        error = late.error if isinstance(late, Gone | Failed) else ""
        self.events.emit("pool.zombie_discarded", agent_id=agent_id, host=slot.host_id, error=error)
        await slot.host.release()
        slot.busy = False
        self.reviving.discard(slot.host_id)
        self._wake.set()

    def _spawn_stalled(self, slot: Slot, agent_id: str, stalled: Stalled, stage: str) -> None:
        """`_stalled` on its own task: a bind or park is awaited by the scheduling pass, which
        must go on while the silent Host stays silent."""
        asyncio.get_running_loop().create_task(self._stalled(slot, agent_id, [], stalled, stage))

    def _fence(self, agent_id: str, epoch: int) -> int:
        """Commit the latest checkpoint again under a new epoch: older writers are refused."""
        record = committed_or_initial(self.store, self.registry, agent_id)
        fence = self.store.next_epoch(agent_id, after=epoch)
        self.store.write(record, fence)
        return fence

    def _fold(self, slot: Slot, agent_id: str, outcomes: list[Outcome]) -> str | None:
        """Fold a batch's outcomes: results, a failed agent, tasks to migrate. Returns why the
        agent must move (then the caller parks it), else None."""
        entry = self.registry.get(agent_id)
        entry.last_used = time.monotonic()
        migrate = [o for o in outcomes if o.result is None]
        failed = False
        for o in outcomes:
            if o.result is not None:
                self.results.append(o.result)
                failed = failed or o.result.agent_state == AgentState.FAILED.value
        if failed:
            reason = next((o.result.error for o in reversed(outcomes) if o.result), "")
            self._agent_failed(slot, agent_id, reason, [(o.task, o.carry) for o in migrate])
            return None
        if (state := outcomes[-1].agent_state if outcomes else None) is not None:
            self._follow(agent_id, state)  # DEGRADED stays; RECOVERING until it is parked
        self.crashes.pop(agent_id, None)  # a batch went through: the crash count starts again
        if self.task_deaths:
            self.task_deaths = forget(self.task_deaths, (o.task.task_id for o in outcomes))
        for o in reversed(migrate):
            self._enqueue(agent_id, (o.task, o.carry), front=True)
        if migrate:
            self.exclude[agent_id] = slot.host_id
            faults = sorted({o.fault.value for o in migrate})
            off_gpu = FaultClass.OOM.value in faults and self.ledger.num_gpus > 1
            why = f"tier 2: {', '.join(faults)}" + (" (memory pressure: off its GPU)" if off_gpu else "")
            self.moving[agent_id] = Move(slot.host_id, slot.gpu, time.monotonic(), why, off_gpu)
            self.events.emit("pool.migrating", agent_id=agent_id, src=slot.host_id, gpu=slot.gpu,
                             tasks=len(migrate), why=why)
            return why
        return None

    def _follow(self, agent_id: str, state: AgentState) -> None:
        """The registry follows the state the agent's Host reports, through the transition
        table; a report the table cannot reach is said (an event) and taken all the same: while
        resident, the Host holds the agent."""
        try:
            self.registry.follow(agent_id, state)
        except Unreachable as exc:
            self.events.emit("pool.state_unreachable", agent_id=agent_id, error=str(exc))
            self.registry.set_state(agent_id, state)

    def _host_lost(self, slot: Slot, batch: list[Item]) -> None:
        """The Host process died: its agent falls back to its committed checkpoint. Deaths in a
        batch are charged to its tasks (a task in flight at `pool.task_deaths` deaths fails
        alone); deaths outside one (bind, park) to the agent, which fails past
        `recovery.intensity` of them, its checkpoint quarantined only if it does not verify."""
        agent_id, slot.agent = slot.agent, None
        slot.lost += 1
        self.metrics.count("hosts_lost")
        self.events.emit("pool.host_lost", host=slot.host_id, agent_id=agent_id,
                         requeued=len(batch))
        # Nothing else may wake the loop (every activation of a pass can fail this way); not at
        # once, so a Host that is still restarting is not hammered.
        asyncio.get_running_loop().call_later(0.2, self._wake.set)
        if slot.host_id not in self.reviving:
            self.reviving.add(slot.host_id)
            asyncio.get_running_loop().create_task(self._revive(slot))
        self._check_node(slot)
        if agent_id is None:
            return
        entry = self.registry.get(agent_id)
        entry.host, entry.hot = None, None
        self.registry.set_state(agent_id, AgentState.DORMANT)
        self.exclude[agent_id] = slot.host_id  # restore it on another Host where one is free
        if batch:
            batch = self._charge_tasks(agent_id, batch)
        elif self._charge_agent(agent_id):
            return
        for item in reversed(batch):
            self._enqueue(agent_id, item, front=True)
        if self.queues.get(agent_id):  # it has work: it is unavailable until bound elsewhere
            self.moving[agent_id] = Move(slot.host_id, slot.gpu, time.monotonic(), "its Host died", False)
            self.registry.want(agent_id)

    def _charge_tasks(self, agent_id: str, batch: list[Item]) -> list[Item]:
        """One more death for each task in flight; those at the limit fail alone. The rest."""
        limit = self.cfg.task_deaths
        self.task_deaths, doomed = count_deaths(self.task_deaths, [t.task_id for t, _ in batch], limit)
        reason = f"its Host died {limit} times running it"
        for task, _ in batch:
            if task.task_id in doomed:
                self._result(task, TaskStatus.FAILED, reason)
                self.events.emit("pool.task_killed_hosts", agent_id=agent_id, task_id=task.task_id,
                                 deaths=limit)
        return [item for item in batch if item[0].task_id not in doomed]

    def _charge_agent(self, agent_id: str) -> bool:
        """One more death outside a batch; past `recovery.intensity` the agent fails (True). Its
        checkpoint is verified: versions that fail are quarantined by the store, good ones kept,
        so a person can release the agent."""
        self.crashes[agent_id] = self.crashes.get(agent_id, 0) + 1
        if self.crashes[agent_id] <= self.settings.recovery.intensity:
            return False
        reason = f"its Host died {self.crashes[agent_id]} times in a row binding or parking it"
        try:
            self.store.verify(agent_id)
            reason += "; its checkpoint verifies"
        except StorageError as exc:
            reason += f"; its checkpoint: {exc}"
        self._agent_failed(None, agent_id, reason, [])
        return True

    async def _revive(self, slot: Slot) -> None:
        """Wait until a lost Host answers again (Ray restarts it), so that no agent is bound to
        it meanwhile and charged with a crash that was not its own."""
        await slot.host.revive()
        self.reviving.discard(slot.host_id)
        self._wake.set()

    def _check_node(self, slot: Slot) -> None:
        """A Host whose node died can never restart there: retire all the Hosts of that node
        and send their resident agents back to DORMANT, to be activated on the live nodes."""
        gone = retire_node(self.slots, slot)
        if not gone:
            return
        self.events.emit("pool.node_lost", node=slot.node, hosts=len(gone),
                         residents=sum(1 for s in gone if s.agent))
        for s in gone:
            if s.agent and not s.busy:  # busy ones come back through their failed call
                self._host_lost(s, [])

    def _agent_failed(
        self, slot: Slot | None, agent_id: str, reason: str, batch: list[Item] | None = None
    ) -> None:
        """Tier 3: the agent goes FAILED; its pending tasks are dead-lettered with the reason."""
        if slot is not None and slot.agent == agent_id:
            slot.agent = None
            slot.host.release()
        entry = self.registry.get(agent_id)
        entry.host, entry.hot = None, None
        self.moving.pop(agent_id, None)
        self.registry.unwant(agent_id)
        self._follow(agent_id, AgentState.FAILED)
        self.monitor.mark_failed.remote(agent_id, reason)  # kept once, if the monitor has not yet
        pending = list(batch or []) + list(self.queues.pop(agent_id, ()))
        for task, _ in pending:
            self._result(task, TaskStatus.FAILED, f"agent failed: {reason}"[:500])
        self.events.emit("pool.agent_failed", agent_id=agent_id, reason=reason[:300],
                         dead_lettered=len(pending))

    async def _reap_loop(self) -> None:
        """A pool whose driver is gone (killed with SIGKILL, its node lost) and that no person
        kept gives the cluster back after `orphan_timeout_s`: monitor, engines, Hosts, itself."""
        timeout = self.cfg.orphan_timeout_s
        while True:
            await asyncio.sleep(min(5.0, timeout / 4))
            idle = time.monotonic() - self.drained
            if not self.kept and idle > timeout:
                self.events.emit("pool.reaped", namespace=self.cfg.namespace, idle_s=round(idle, 1))
                from pool.driver.runs import shutdown_pool

                shutdown_pool(self.cfg.namespace)  # kills this actor last
                return

    # -- for the driver and the CLI --------------------------------------------------------
    def keep(self) -> None:
        """The run ended with `--keep-pool`: never reap this pool (`selfheal stop` ends it)."""
        self.kept = True

    async def drain(self) -> dict[str, Any]:
        self.drained = time.monotonic()
        results, self.results = self.results, []
        self.metrics.tasks(r.status.value for r in results)
        self.metrics.pool(self.registry.counts(), self._queued())
        events = self.events.drain()
        # a restarting monitor's events come with the next drain
        with contextlib.suppress(RayError, TimeoutError):
            events.extend(await asyncio.wait_for(self.monitor.drain_events.remote(), timeout=5))
        self.trail.feed(events)
        pressed = [{"gpu": g, "used_mib": self.ledger.used(self._residents_on(g), g),
                    "limit_mib": round(self.ledger.limit_mib)} for g in sorted(self._over_limit())]
        return {"results": results, "events": events, "queued": self._queued(), "boot": self.boot,
                "pressed": pressed, "gpus": self.ledger.num_gpus, "paused": bool(self.paused)}

    async def release(self, agent_id: str) -> bool:
        """A person releases a FAILED agent back to DORMANT."""
        if agent_id not in self.registry or self.registry.get(agent_id).state is not AgentState.FAILED:
            return False
        record = committed_or_initial(self.store, self.registry, agent_id)
        fixed = record.model_copy(update={"state": AgentState.DORMANT, "failed_reason": None})
        entry = self.registry.get(agent_id)
        entry.epoch = self.store.next_epoch(agent_id, after=entry.epoch)
        self.store.write(fixed, entry.epoch)
        self.registry.set_state(agent_id, AgentState.DORMANT)
        self.crashes.pop(agent_id, None)
        await self.monitor.release.remote(agent_id)
        self.events.emit("agent.released", agent_id=agent_id)
        return True
