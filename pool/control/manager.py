"""The PoolManager actor: the Ray edge of the pure scheduler, as one short loop.

    actions = scheduler.schedule(now)        # what to do: binds, parks, batches, follow-ups
    each action runs on its own task         # through the Host's HostClient, or the store
    scheduler.update(outcome, now)           # every reply is folded back; the loop wakes

The manager decides nothing: every per-agent and per-Host fact and every decision is the
scheduler's (`pool.control.scheduler`). It owns the Ray side: the Host actors (created in
`pool.control.slots`, called only through `pool.control.hosts.HostClient`), the monitor, the
hot tier (`ray.put` of parked bytes), the store's I/O (off the event loop), and its two
collaborators: GPU control (`pool.control.vram.GpuControl`: engine base, readings, pause) and
the operator's views (`pool.control.queries.Views`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agents.config import Settings
from agents.errors import StorageError
from agents.models import AgentSpec
from agents.state import AgentState
from pool.control import actions as act
from pool.control.actions import Action, Item, Update
from pool.control.budget import VramLedger
from pool.control.gate import start_gate
from pool.control.hosts import Done, Failed, Gone, HostClient, Reply, Stalled
from pool.control.queries import Views
from pool.control.registry import Registry
from pool.control.scheduler import Scheduler
from pool.control.slots import create_hosts, locate, node_alive
from pool.control.vram import GpuControl
from pool.driver.runs import split_namespace
from pool.ops.attach import AgentTrail
from pool.ops.metrics import PoolMetrics
from pool.runtime.actors import MONITOR_NAME, MonitorActor
from pool.store.agent_table import AgentTable, committed_or_initial, initial_bytes
from pool.store.checkpoint import CheckpointStore


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000)  # type: ignore[call-overload]
class PoolManager:
    def __init__(self, settings: Settings, store_root: str) -> None:
        self.settings, self.cfg, self.store_root = settings, settings.pool, store_root
        # The root travels as the string given: a URI names the same store on every node.
        self.store = CheckpointStore(store_root, keep=self.cfg.keep_versions)
        self.table = AgentTable(store_root)  # registered agents, durable; read back here
        registry = Registry()
        registry.add_rows(self.table.load())
        self.metrics = PoolMetrics(self.cfg.namespace)
        self.sched = Scheduler(self.cfg, settings.recovery.intensity,
                               VramLedger.from_config(self.cfg), registry, self.metrics.count,
                               first_dispatch=time.time_ns() // 1000)  # a late report never matches
        self.events = self.sched.events
        self.clients: dict[str, HostClient] = {}
        self.monitor = MonitorActor.options(  # type: ignore[attr-defined]
            name=MONITOR_NAME, namespace=self.cfg.namespace, lifetime="detached",
            get_if_exists=True, scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False),  # beside the manager
        ).remote(settings, store_root)  # its dead-letter table lives in the store
        self._wake = asyncio.Event()
        self._results = asyncio.Event()  # set when results wait for a drain
        self.gpu = GpuControl(self.sched, self.clients, self.store, self.cfg, self._wake.set)
        self.trail = AgentTrail()  # recent events per agent, for `selfheal inspect`
        self.views = Views(self.sched, self.store, self.monitor, self.trail, self.metrics)
        self._loop: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # held: the loop keeps weak references
        self.boot = uuid.uuid4().hex  # a restarted manager starts empty: the driver feeds it again
        self.drained = time.monotonic()  # the driver's last drain: a pool nobody drains is reaped
        self.kept = False  # `--keep-pool`: the run ended and a person may inspect the pool

    # -- setup ----------------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        if not self.clients:
            ns = self.cfg.namespace
            # one pool creates its Hosts at a time; a namespace with no run id has a gate of its own
            gate = start_gate(split_namespace(ns)[0] or ns)
            await gate.acquire.remote(ns)
            try:
                clients, self.sched.ledger = create_hosts(self.settings, self.store_root)
                hosts = await locate(clients)
            finally:
                gate.release.remote(ns)
            self.clients.update((c.host_id, c) for c in clients)
            self.sched.add_hosts(hosts)
            self.events.emit("pool.started", hosts=len(hosts), gpus=self.sched.ledger.num_gpus,
                             nodes=len({h.node for h in hosts}))
            self.gpu.restore_pause()
        if self._loop is None:
            self._loop = self._spawn(self._run_loop())
            for job in (self.gpu.learn_base(), self.gpu.reconcile_loop(), self.views.gauge_loop(),
                        self._reap_loop()):
                self._spawn(job)
        return {"hosts": len(self.clients), "gpus": self.sched.ledger.num_gpus}

    async def register(self, specs: list[AgentSpec]) -> int:
        """Add agents: one durable file of rows in the agent table per call, no checkpoint (the
        first is written when the agent is first committed). Returns how many were new."""
        registry = self.sched.registry
        rows = registry.new_rows(specs)
        await asyncio.to_thread(self.table.append, rows)  # durable before the agents exist
        new = registry.add_rows(rows)
        self.events.emit("pool.registered", agents=len(registry), new=new)
        return new

    async def submit(self, items: list[Item]) -> int:
        self.sched.book.submit(items)
        self._wake.set()
        return len(items)

    def report_state(self, agent_id: str, dispatch: int, state: str) -> None:
        """A Host's report of its agent's new state during batch `dispatch` (fire-and-forget)."""
        if agent_id in self.sched.registry:
            self._feed(act.StateReported(agent_id, dispatch, AgentState(state)))

    def report_task(self, agent_id: str, dispatch: int, task_id: str) -> None:
        """A Host's report that it starts a step of `task_id` in batch `dispatch` (fire-and-forget)."""
        if agent_id in self.sched.registry:
            self._feed(act.TaskStarted(agent_id, dispatch, task_id))

    # -- the loop ---------------------------------------------------------------------------
    async def _run_loop(self) -> None:
        while True:
            retry_at = self.sched.retry_at
            timeout = None if retry_at is None else max(0.0, retry_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                actions = self.sched.schedule(time.monotonic())
            except Exception as exc:  # keep the pool alive; the event says what broke
                self.events.emit("pool.schedule_error", error=repr(exc)[:300])
                await asyncio.sleep(0.05)
                self._wake.set()
                continue
            for action in actions:
                self._spawn(self._apply(action))

    def _feed(self, outcome: Update) -> None:
        self.sched.update(outcome, time.monotonic())
        if isinstance(outcome, act.Bound | act.Parked):
            self.views.note_residency()
        if self.sched.book.results:
            self._results.set()
        self._wake.set()

    def _spawn(self, job: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _apply(self, a: Action) -> None:
        try:
            match a:
                case act.Bind():
                    await self._bind(a)
                case act.Park():
                    self._reply(a.host, a.agent, "park", await self.clients[a.host].park(),
                                self.sched.registry.get(a.agent).epoch, why=a.why)
                case act.Run():
                    reply = await self.clients[a.host].run(a.agent, list(a.batch), a.headroom, a.dispatch)
                    self._reply(a.host, a.agent, "run", reply, a.epoch, a.batch, a.dispatch)
                case act.Fence():
                    await self._fence(a.agent, a.after)
                case act.Release():
                    self.clients[a.host].release()
                case act.Revive():
                    await self.clients[a.host].revive()
                    self._feed(act.Revived(a.host))
                case act.CheckNode():
                    if not await asyncio.to_thread(node_alive, a.node):
                        self._feed(act.NodeLost(a.node))
                case act.FailAgent():
                    await self._record_failed(a)
        except Exception as exc:  # an action that broke is said; the pool goes on
            self.events.emit("pool.action_error", action=type(a).__name__, error=repr(exc)[:300])
            if isinstance(a, act.Bind | act.Park | act.Run):  # its Host must not stay busy
                batch = a.batch if isinstance(a, act.Run) else ()
                self._feed(act.CallFailed(a.host, a.agent, type(a).__name__.lower(), repr(exc)[:300], batch))
            self._wake.set()

    async def _bind(self, a: act.Bind) -> None:
        started = time.perf_counter()
        def prepare() -> tuple[int, bytes | None]:  # the store's I/O, off the event loop
            epoch = self.store.next_epoch(a.agent, a.after)  # above the store's fence
            # never committed: bound from its registry row, the durable tier's copy ("disk")
            row = None if a.hot is not None else initial_bytes(self.store, self.sched.registry, a.agent)
            return epoch, row

        try:
            epoch, row = await asyncio.to_thread(prepare)
        except StorageError as exc:
            self._feed(act.CallFailed(a.host, a.agent, "bind", str(exc)))
            return
        reply = await self.clients[a.host].bind(a.agent, a.hot if row is None else row, epoch)
        if isinstance(reply, Done):
            self._feed(act.Bound(a.host, a.agent, epoch, reply.value,
                                 time.perf_counter() - started, hot=a.hot is not None))
        else:
            self._reply(a.host, a.agent, "bind", reply, epoch)

    def _reply(self, host: str, agent: str, stage: str, reply: Reply[Any], epoch: int,
               batch: tuple[Item, ...] = (), dispatch: int = 0, why: str = "") -> None:
        """Fold a Host's reply to a bind, park or run."""
        match reply:
            case Done(value=blob) if stage == "park":
                self._feed(act.Parked(host, agent, ray.put(blob), why))
            case Done(value=(outcomes, events, kv_tokens)):
                self._feed(act.Ran(host, agent, dispatch, tuple(outcomes), tuple(events), kv_tokens))
            case Gone():
                self._feed(act.HostLost(host, batch))
            case Failed(error=error, stale=stale):
                self._feed(act.CallFailed(host, agent, stage, error, batch, stale, epoch))
            case Stalled(answer=answer):  # fenced off; the Host stays busy until it answers
                self._feed(act.HostStalled(host, agent, stage, epoch, batch))
                self._spawn(self._reclaim(host, agent, answer))

    async def _reclaim(self, host: str, agent: str, answer: asyncio.Future[Reply[Any]]) -> None:
        """A stalled Host's late answer is discarded; then the Host is released for new work."""
        late = await answer
        await self.clients[host].release()
        self._feed(act.Reclaimed(host, agent, late.error if isinstance(late, Gone | Failed) else ""))

    async def _fence(self, agent: str, after: int) -> None:
        """Commit the latest checkpoint again under a new epoch: older writers are refused."""
        def write() -> int:
            record = committed_or_initial(self.store, self.sched.registry, agent)
            fence = self.store.next_epoch(agent, after=after)
            self.store.write(record, fence)
            return fence

        try:
            self._feed(act.Fenced(agent, await asyncio.to_thread(write)))
        except StorageError as exc:
            self._feed(act.Fenced(agent, 0, str(exc)))

    async def _record_failed(self, a: act.FailAgent) -> None:
        """FAILED, in the monitor's table (kept once). After a crash streak the checkpoint is
        verified first: versions that fail are quarantined, good ones kept for a release."""
        reason = a.reason
        if a.verify:
            try:
                await asyncio.to_thread(self.store.verify, a.agent)
                reason += "; its checkpoint verifies"
            except StorageError as exc:
                reason += f"; its checkpoint: {exc}"
        self.monitor.mark_failed.remote(a.agent, reason)

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

    async def drain(self, wait_s: float = 0.0) -> dict[str, Any]:
        """Results and events since the last drain. With `wait_s`, a drain that finds no result
        waits for one that long at most (a long poll: a caller gets results as they come without
        asking many times a second)."""
        self.drained = time.monotonic()
        book, ledger = self.sched.book, self.sched.ledger
        if wait_s > 0 and not book.results:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._results.wait(), wait_s)
            self.drained = time.monotonic()
        self._results.clear()
        results, book.results = book.results, []
        self.metrics.tasks(r.status.value for r in results)
        queued = book.queued()  # a pass over the entries in use: once per drain
        self.metrics.pool(self.sched.registry.counts(), queued)
        events = self.events.drain()
        # a restarting monitor's events come with the next drain
        with contextlib.suppress(RayError, TimeoutError):
            events.extend(await asyncio.wait_for(self.monitor.drain_events.remote(), timeout=5))
        self.trail.feed(events)
        pressed = [{"gpu": g, "used_mib": ledger.used(self.sched.residents_on(g), g),
                    "limit_mib": round(ledger.limit_mib)} for g in sorted(self.sched.over_limit())]
        return {"results": results, "events": events, "queued": queued, "boot": self.boot,
                "pressed": pressed, "gpus": ledger.num_gpus, "paused": bool(self.sched.paused)}

    async def release(self, agent_id: str) -> bool:
        """A person releases a FAILED agent back to DORMANT."""
        registry = self.sched.registry
        if agent_id not in registry or registry.get(agent_id).state is not AgentState.FAILED:
            return False

        def write() -> int:
            record = committed_or_initial(self.store, registry, agent_id)
            fixed = record.model_copy(update={"state": AgentState.DORMANT, "failed_reason": None})
            epoch = self.store.next_epoch(agent_id, after=registry.get(agent_id).epoch)
            self.store.write(fixed, epoch)
            return epoch

        self.sched.book.released(agent_id, await asyncio.to_thread(write))
        await self.monitor.release.remote(agent_id)
        self.events.emit("agent.released", agent_id=agent_id)
        return True

    # -- read-only, for the CLI and benchmarks (`pool.control.queries.Views`) ----------------
    async def status(self) -> dict[str, Any]:
        return await self.views.status()

    async def failed(self) -> dict[str, Any]:
        return await self.views.failed()

    async def inspect(self, agent_id: str) -> dict[str, Any] | None:
        return await self.views.inspect(agent_id)

    def memory(self, trace: bool | None = None) -> dict[str, int]:
        return self.views.memory(trace)

    async def pause(self, timeout_s: float = 300.0) -> dict[str, Any]:
        return await self.gpu.pause(timeout_s)

    async def resume(self) -> dict[str, Any]:
        return await self.gpu.resume()

    async def reconcile(self) -> bool:
        return await self.gpu.reconcile()
