"""The PoolManager actor: plan -> apply -> fold for thousands of agents on a few warm Hosts.

It owns the registry (one small entry per agent), the task queues, the residency of agents on
Hosts and the VRAM ledger. Each scheduling pass asks the pure planner (`pool.budget.plan`) which
dormant agents with work to activate and which residents to park, applies the plan to the Hosts
(park: commit + unbind, bytes kept in the object store as the hot tier; activate: bind a
checkpoint to a warm Host), dispatches queued tasks to resident agents in batches, and folds the
outcomes back: terminal results, migrations, lost Hosts, failed agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agents.config import Settings
from agents.errors import StaleEpoch, UsageError
from agents.events import EventSink
from agents.models import AgentRecord, AgentSpec, Task, TaskResult, TaskStatus
from agents.state import AgentState
from pool.actors import MONITOR_NAME, HostActor, MonitorActor, engine_threads
from pool.budget import Demand, Ledger, Resident, plan
from pool.checkpoint import CheckpointStore
from pool.host import Carry, Outcome
from pool.registry import Registry

Item = tuple[Task, Carry | None]


class Slot:
    """A warm Host and what it holds."""

    __slots__ = ("handle", "host_id", "gpu", "agent", "busy", "lost")

    def __init__(self, handle: Any, host_id: str, gpu: int) -> None:
        self.handle = handle
        self.host_id = host_id
        self.gpu = gpu
        self.agent: str | None = None
        self.busy = False  # a call (run, park, bind) is in flight
        self.lost = 0  # times this Host died under an agent


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000)  # type: ignore[call-overload]
class PoolManager:
    def __init__(self, settings: Settings, store_root: str) -> None:
        self.settings = settings
        self.cfg = settings.pool
        self.store = CheckpointStore(Path(store_root), keep=self.cfg.keep_versions)
        self.store_root = store_root
        self.registry = Registry()
        self.queues: dict[str, deque[Item]] = {}
        self.slots: list[Slot] = []
        self.ledger = Ledger.from_config(self.cfg)
        self.results: list[TaskResult] = []
        self.events = EventSink("pool-manager")
        self.exclude: dict[str, str] = {}  # agent_id -> Host it must not return to (migration)
        self.crashes: dict[str, int] = {}  # agent_id -> Hosts lost under it
        self.monitor = MonitorActor.options(  # type: ignore[attr-defined]
            name=MONITOR_NAME, namespace=self.cfg.namespace, lifetime="detached",
            get_if_exists=True,
        ).remote(settings)
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._peak: dict[int, tuple[int, float]] = {}

    # -- setup ----------------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        if not self.slots:
            self.slots = self._create_hosts()
            infos = await asyncio.gather(*(s.handle.info.remote() for s in self.slots))
            self.events.emit("pool.started", hosts=len(self.slots), gpus=self.ledger.num_gpus,
                             nodes=len({i["node"] for i in infos}))
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run_loop())
        return {"hosts": len(self.slots), "gpus": self.ledger.num_gpus}

    def _create_hosts(self) -> list[Slot]:
        alive = [n for n in ray.nodes() if n["Alive"]]  # type: ignore[no-untyped-call]
        nodes = [n for n in alive if n["Resources"].get("GPU", 0) >= 1]
        if not nodes:
            raise UsageError("the Ray cluster has no GPU resources; start Ray with num_gpus >= 1")
        slots: list[Slot] = []
        k = self.cfg.slots_per_gpu
        for node in nodes:
            node_id, gpus = node["NodeID"], int(node["Resources"]["GPU"])
            threads = engine_threads(self.settings, gpus * k)
            for g in range(gpus):
                for i in range(k):
                    host_id = f"host-{node_id[:8]}-{g}-{i}"
                    handle = HostActor.options(  # type: ignore[attr-defined]
                        name=host_id, namespace=self.cfg.namespace, num_gpus=1 / k,
                        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                    ).remote(host_id, self.settings, self.store_root, threads)
                    slots.append(Slot(handle, host_id, len(slots) // k))
        self.ledger = Ledger(self.cfg.budget_mib, self.cfg.watermark, self.cfg.engine_base_mib,
                             len(slots) // k, k)
        return slots

    async def register(self, specs: list[AgentSpec]) -> int:
        """Add agents; new ones get an initial durable checkpoint. Returns how many were new."""
        new = 0
        for spec in specs:
            if spec.agent_id in self.registry:
                continue
            if not self.store.exists(spec.agent_id):
                await asyncio.to_thread(self.store.write, AgentRecord(spec=spec), 0)
                new += 1
            self.registry.add(spec.agent_id, spec.priority)
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
        free = sum(1 for s in self.slots if not s.busy)
        demands = self.registry.next_demands(max(1, free))
        if demands:
            await self._apply(self._plan(demands))
        for slot in self.slots:
            if slot.agent and not slot.busy and self.queues.get(slot.agent):
                self._dispatch(slot)

    def _plan(self, demands: list[str]) -> Any:
        residents = [
            Resident(s.agent, s.gpu, self.registry.get(s.agent).priority,
                     self.registry.get(s.agent).last_used, self.cfg.agent_kv_mib, s.busy,
                     bool(self.queues.get(s.agent)))
            for s in self.slots if s.agent
        ]
        wanted = [Demand(a, self.registry.get(a).priority, self.cfg.agent_kv_mib) for a in demands]
        return plan(residents, wanted, self.ledger)

    async def _apply(self, p: Any) -> None:
        by_agent = {s.agent: s for s in self.slots if s.agent}
        await asyncio.gather(*(self._park(by_agent[a]) for a in p.park))
        binds = []
        for placement in p.activate:
            slot = self._free_slot(placement.agent_id, placement.gpu)
            if slot is not None:
                slot.busy, slot.agent = True, placement.agent_id  # reserved before any await
                binds.append(self._activate(slot, placement.agent_id))
        await asyncio.gather(*binds)
        self._note_residency()

    def _free_slot(self, agent_id: str, gpu: int) -> Slot | None:
        avoid = self.exclude.get(agent_id)
        free = [s for s in self.slots if s.gpu == gpu and s.agent is None and not s.busy]
        preferred = [s for s in free if s.host_id != avoid]
        choice = preferred or free
        return choice[0] if choice else None

    async def _park(self, slot: Slot) -> None:
        agent_id = slot.agent
        assert agent_id is not None
        slot.busy = True
        try:
            blob = await slot.handle.park.remote()
            entry = self.registry.get(agent_id)
            entry.hot = ray.put(blob)
            entry.host = None
            self.registry.set_state(agent_id, AgentState.DORMANT)
            self.events.emit("pool.parked", agent_id=agent_id, host=slot.host_id)
        except RayActorError:
            self._host_lost(slot, [])
        finally:
            slot.agent = None if slot.agent == agent_id else slot.agent
            slot.busy = False
        if self.queues.get(agent_id):
            self.registry.want(agent_id)

    async def _activate(self, slot: Slot, agent_id: str) -> None:
        entry = self.registry.get(agent_id)
        latest = self.store.latest(agent_id)
        entry.epoch = max(entry.epoch, latest.epoch if latest else 0) + 1
        self.registry.unwant(agent_id)
        entry.host = slot.host_id
        started = time.perf_counter()
        try:
            info = await self._bind(slot, agent_id, entry)
        except RayActorError:
            self._host_lost(slot, [])
            return
        except RayError as exc:
            self._agent_failed(slot, agent_id, f"activation failed: {_cause(exc)}")
            return
        finally:
            slot.busy = False
        entry.last_used = time.monotonic()
        self.events.extend(info["events"])
        self.registry.set_state(agent_id, AgentState(info["state"]))
        self.events.emit("pool.activated", agent_id=agent_id, host=slot.host_id, gpu=slot.gpu,
                         epoch=entry.epoch, latency_s=round(time.perf_counter() - started, 6),
                         kv_restored=info["kv_restored"], tier=info["tier"])
        if entry.state is AgentState.FAILED:
            self._agent_failed(slot, agent_id, "agent was FAILED in its checkpoint")
        self._wake.set()

    async def _bind(self, slot: Slot, agent_id: str, entry: Any) -> dict[str, Any]:
        hot, entry.hot = entry.hot, None
        if hot is not None:
            try:
                return await slot.handle.bind.remote(agent_id, hot, entry.epoch)  # type: ignore[no-any-return]
            except RayActorError:
                raise
            except RayError:  # object lost with its owner: fall back to the durable tier
                self.events.emit("pool.hot_miss", agent_id=agent_id)
        return await slot.handle.bind.remote(agent_id, None, entry.epoch)  # type: ignore[no-any-return]

    def _dispatch(self, slot: Slot) -> None:
        assert slot.agent is not None
        queue = self.queues[slot.agent]
        batch = [queue.popleft() for _ in range(min(len(queue), self.cfg.batch_per_agent))]
        slot.busy = True
        self.registry.set_state(slot.agent, AgentState.RUNNING)
        headroom = self.ledger.headroom(self._residents_on(slot.gpu), slot.gpu)
        ref = slot.handle.run.options(name=f"{slot.agent}.run").remote(batch, headroom)
        asyncio.get_running_loop().create_task(self._collect(slot, slot.agent, batch, ref))

    def _residents_on(self, gpu: int) -> list[Resident]:
        return [Resident(s.agent, s.gpu, 0, 0.0, self.cfg.agent_kv_mib, s.busy, False)
                for s in self.slots if s.agent and s.gpu == gpu]

    async def _collect(self, slot: Slot, agent_id: str, batch: list[Item], ref: Any) -> None:
        try:
            outcomes, events = await ref
            self.events.extend(events)
        except RayActorError:
            self._host_lost(slot, batch)
        except RayError as exc:
            if isinstance(getattr(exc, "cause", None), StaleEpoch):  # a zombie: the agent lives on elsewhere
                self.events.emit("pool.zombie_discarded", agent_id=agent_id, host=slot.host_id)
            else:
                self._agent_failed(slot, agent_id, f"host error: {_cause(exc)}", batch)
        else:
            self._fold(slot, agent_id, outcomes)
        finally:
            slot.busy = False
            self._wake.set()

    def _fold(self, slot: Slot, agent_id: str, outcomes: list[Outcome]) -> None:
        """Fold a batch's outcomes: results, a failed agent, tasks to migrate."""
        entry = self.registry.get(agent_id)
        entry.last_used = time.monotonic()
        migrate = [o for o in outcomes if o.result is None]
        failed = False
        for o in outcomes:
            if o.result is not None:
                self.results.append(o.result)
                failed = failed or o.result.agent_state == AgentState.FAILED.value
        if failed:
            self._agent_failed(slot, agent_id, outcomes[-1].result.error if outcomes[-1].result else "")
            return
        self.registry.set_state(agent_id, AgentState.IDLE)
        for o in reversed(migrate):
            self._enqueue(agent_id, (o.task, o.carry), front=True)
        if migrate:
            self.exclude[agent_id] = slot.host_id
            self.events.emit("pool.migrating", agent_id=agent_id, src=slot.host_id,
                             tasks=len(migrate))
            asyncio.get_running_loop().create_task(self._park(slot))

    def _host_lost(self, slot: Slot, batch: list[Item]) -> None:
        """The Host process died: its agent falls back to its committed checkpoint."""
        agent_id, slot.agent = slot.agent, None
        slot.lost += 1
        self.events.emit("pool.host_lost", host=slot.host_id, agent_id=agent_id,
                         requeued=len(batch))
        if agent_id is None:
            return
        entry = self.registry.get(agent_id)
        entry.host, entry.hot = None, None
        self.registry.set_state(agent_id, AgentState.DORMANT)
        self.crashes[agent_id] = self.crashes.get(agent_id, 0) + 1
        if self.crashes[agent_id] > self.settings.recovery.intensity:
            self._agent_failed(None, agent_id, "its Host died too often", batch)
            return
        for item in reversed(batch):
            self._enqueue(agent_id, item, front=True)
        if self.queues.get(agent_id):
            self.registry.want(agent_id)

    def _agent_failed(
        self, slot: Slot | None, agent_id: str, reason: str, batch: list[Item] | None = None
    ) -> None:
        """Tier 3: the agent goes FAILED; its pending tasks are dead-lettered with the reason."""
        if slot is not None and slot.agent == agent_id:
            slot.agent = None
            slot.handle.release.remote()
        entry = self.registry.get(agent_id)
        entry.host, entry.hot = None, None
        self.registry.unwant(agent_id)
        self.registry.set_state(agent_id, AgentState.FAILED)
        self.monitor.mark_failed.remote(agent_id, reason)
        pending = list(batch or []) + list(self.queues.pop(agent_id, ()))
        for task, _ in pending:
            self._result(task, TaskStatus.FAILED, f"agent failed: {reason}"[:500])
        self.events.emit("pool.agent_failed", agent_id=agent_id, reason=reason[:300],
                         dead_lettered=len(pending))

    def _note_residency(self) -> None:
        for gpu in range(self.ledger.num_gpus):
            residents = self._residents_on(gpu)
            used = self.ledger.used(residents, gpu)
            self.events.emit("pool.residency", gpu=gpu, residents=len(residents), used_mib=used,
                             limit_mib=self.ledger.limit_mib, slots=self.ledger.slots_per_gpu)

    # -- for the driver and the CLI --------------------------------------------------------
    async def drain(self) -> dict[str, Any]:
        results, self.results = self.results, []
        events = self.events.drain()
        # a restarting monitor's events come with the next drain
        with contextlib.suppress(RayError, TimeoutError):
            events.extend(await asyncio.wait_for(self.monitor.drain_events.remote(), timeout=5))
        return {"results": results, "events": events, "queued": self._queued()}

    def _queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    async def status(self) -> dict[str, Any]:
        hosts = [{"host": s.host_id, "gpu": s.gpu, "agent": s.agent, "busy": s.busy,
                  "lost": s.lost} for s in self.slots]
        return {
            "agents": len(self.registry), "by_state": self.registry.counts(),
            "hosts": hosts, "queued": self._queued(), "waiting_agents": self.registry.waiting(),
            "ledger": [{"gpu": g, "used_mib": self.ledger.used(self._residents_on(g), g),
                        "limit_mib": self.ledger.limit_mib, "budget_mib": self.ledger.budget_mib}
                       for g in range(self.ledger.num_gpus)],
        }

    async def release(self, agent_id: str) -> bool:
        """A person releases a FAILED agent back to DORMANT."""
        if agent_id not in self.registry or self.registry.get(agent_id).state is not AgentState.FAILED:
            return False
        record, _ = self.store.read(agent_id)
        fixed = record.model_copy(update={"state": AgentState.DORMANT, "failed_reason": None})
        entry = self.registry.get(agent_id)
        latest = self.store.latest(agent_id)
        entry.epoch = max(entry.epoch, latest.epoch if latest else 0) + 1
        self.store.write(fixed, entry.epoch)
        self.registry.set_state(agent_id, AgentState.DORMANT)
        self.crashes.pop(agent_id, None)
        await self.monitor.release.remote(agent_id)
        self.events.emit("agent.released", agent_id=agent_id)
        return True


def _cause(exc: BaseException) -> str:
    """The innermost error's one-line message."""
    cause = getattr(exc, "cause", None) or exc
    text = f"{type(cause).__name__}: {cause}"
    return text.splitlines()[0][:300] if text else type(exc).__name__
