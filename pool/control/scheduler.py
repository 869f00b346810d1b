"""The pool's scheduler: every per-agent and per-Host fact, and every decision, with no Ray and no I/O.

Theory of operation (the shape of vLLM v1's scheduler; h11's rule that everything affecting the
state machine lives in one place). `schedule(now)` returns what to do now: parks and activations
from the residency planner (`pool.control.budget.plan`), batches dispatched to idle residents,
and the follow-ups earlier outcomes asked for (fences, releases, revivals). `update(event, now)`
folds what happened: a Host's answer to a bind, park or run, a lost or stalled Host, a fence
written, a device reading, a Host's mid-batch reports (state moves, the task it starts). The
PoolManager carries actions out through `pool.control.hosts.HostClient` and feeds every reply
back; it decides nothing. Facts: one `Entry` per agent in the registry, one `HostSlot` per Host,
the VRAM ledger, paused GPUs; queues, results and deaths per task in the `AgentBook`, through
which every state change goes (the transition table). No plan parks while parks are in flight
(a demand never evicts twice), but a Host a park emptied takes the next in line at once.
`tests/unit/test_scheduler_props.py` holds it to the budget, the slot cap, the table and every
task in one place across random events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from agents.config import PoolConfig
from agents.errors import FaultClass
from agents.events import EventSink
from agents.state import AgentState, Event
from pool.control import actions as act
from pool.control.actions import Action, Item, Update
from pool.control.book import AgentBook
from pool.control.budget import Demand, Resident, VramLedger, plan
from pool.control.facts import HostSlot, Move
from pool.control.registry import Registry
from pool.runtime.host import Outcome

LOST_RETRY_S = 0.2  # after a lost Host: schedule again, not at once (it may still be restarting)
PARK_RETRY_S = 0.5  # after a failed park (a full disk, say): a moment before trying again
SHED_RETRY_S = 0.05  # a resident waits to be shed before its GPU takes another batch


class Scheduler:
    def __init__(self, cfg: PoolConfig, intensity: int, ledger: VramLedger,
                 registry: Registry | None = None,
                 count: Callable[[str], None] = lambda _name: None, first_dispatch: int = 0) -> None:
        self.cfg, self.ledger = cfg, ledger
        self.registry = registry or Registry()
        self.events = EventSink("pool-manager")
        self.book = AgentBook(cfg, intensity, self.registry, self.events)
        self.hosts: list[HostSlot] = []
        self.paused: dict[int, str] = {}  # gpu -> pausing | slept | parked
        self.count = count  # a metric counter (parks, activations, migrations, hosts_lost)
        self.retry_at: float | None = None  # schedule again at this time even if nothing happens
        self._out: list[Action] = []  # follow-ups asked for by outcomes, handed out by schedule()
        self._dispatches = first_dispatch  # a restarted manager numbers above the old one's
        self._by_id: dict[str, HostSlot] = {}

    def add_hosts(self, hosts: Iterable[HostSlot]) -> None:
        self.hosts = list(hosts)
        self._by_id = {h.host_id: h for h in self.hosts}

    def host(self, host_id: str) -> HostSlot:
        return self._by_id[host_id]

    # -- schedule(now) ----------------------------------------------------------------------
    def schedule(self, now: float) -> list[Action]:
        """What to do now; every action's Host is marked busy with it until its outcome."""
        out, self._out = self._out, []
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
        if self.paused:  # the GPUs are given back: work waits for `resume`
            return out
        # A just-bound agent runs its work before any plan (else: bind, park, bind: thrash). Others
        # with work may be parked for an agent of equal or higher priority (the eviction order).
        out += self._dispatch_all(now, fresh_only=True)
        parking = any(h.call == "park" for h in self.hosts)
        free = sum(1 for h in self.hosts if not h.busy and (not parking or h.empty))
        if not parking or free:
            demands = self.registry.next_demands(max(1, free))
            if demands or self.over_limit():
                out += self._plan(demands, now, may_park=not parking)
        return out + self._dispatch_all(now, fresh_only=False)

    def _dispatch_all(self, now: float, fresh_only: bool) -> list[act.Run]:
        over = self.over_limit() if self.ledger.agent_mib else set()  # else: nothing to shed
        runs = []
        for h in self.hosts:
            if h.agent and not h.busy and (h.fresh or not fresh_only) and self.registry.get(h.agent).queue:
                if h.gpu in over:  # shed first: a batch there could only run out of memory
                    self._retry(now, SHED_RETRY_S)
                else:
                    runs.append(self._dispatch(h))
        return runs

    def _plan(self, demands: list[str], now: float, may_park: bool = True) -> list[Action]:
        residents = [Resident(h.agent, h.gpu, (e := self.registry.get(h.agent)).priority,
                              e.last_used, self.ledger.footprint(h.kv_tokens), h.busy, bool(e.queue))
                     for h in self.hosts if h.agent]
        residents += [Resident(f"<dead {h.host_id}>", h.gpu, 9, 0.0, 0, True, False)  # never
                      for h in self.hosts if h.dead or (h.agent is None and h.reviving)]  # placed on
        wanted = [Demand(a, self.registry.get(a).priority, self.ledger.agent_mib,
                         m.src_gpu if (m := self.registry.get(a).move) and m.off_gpu else None)
                  for a in demands]
        p = plan(residents, wanted, self.ledger)
        if p.park and not may_park:
            return []
        by_agent = {h.agent: h for h in self.hosts if h.agent}
        out: list[Action] = []
        for a in p.park:
            h = by_agent[a]
            if a in p.shed and self.registry.get(a).queue:  # it has work: it moves to another GPU
                why = (f"memory pressure: gpu {h.gpu} holds {self.ledger.extra(h.gpu)} MiB more "
                       f"than the ledger accounts for")
                self.registry.get(a).move = Move(h.host_id, h.gpu, now, why, off_gpu=True)
            out.append(self._park(h, "memory pressure" if a in p.shed else ""))
        if out:  # the activations wait for the room the parks make: the next plan places them
            return out
        over = self.over_limit()
        for placement in p.activate:
            free = self._free_host(placement.agent_id, placement.gpu)
            if free is not None and placement.gpu not in over:  # else: left to the next pass
                out.append(self._bind(free, placement.agent_id))
        return out

    def _free_host(self, agent_id: str, gpu: int) -> HostSlot | None:
        avoid = self.registry.get(agent_id).avoid
        free = [h for h in self.hosts if h.gpu == gpu and h.empty]
        return next((h for h in free if h.host_id != avoid), free[0] if free else None)

    def _bind(self, h: HostSlot, agent_id: str) -> act.Bind:
        entry = self.registry.get(agent_id)
        self.registry.unwant(agent_id)
        h.agent, h.call, entry.host = agent_id, "bind", h.host_id
        hot, entry.hot = entry.hot, None
        return act.Bind(h.host_id, agent_id, hot, entry.epoch)

    def _park(self, h: HostSlot, why: str) -> act.Park:
        assert h.agent is not None
        h.call, h.pressed = "park", self.ledger.over_limit(self.residents_on(h.gpu), h.gpu)
        return act.Park(h.host_id, h.agent, why)

    def _dispatch(self, h: HostSlot) -> act.Run:
        assert h.agent is not None
        entry = self.registry.get(h.agent)
        batch = tuple(entry.queue.popleft() for _ in range(min(len(entry.queue), self.cfg.batch_per_agent)))
        h.call, h.fresh = "run", False
        self.book.move(h.agent, Event.START)
        self._dispatches += 1
        entry.dispatch, entry.running = self._dispatches, ""
        headroom = self.ledger.headroom(self.residents_on(h.gpu), h.gpu)
        return act.Run(h.host_id, h.agent, batch, headroom, entry.dispatch, entry.epoch)

    # -- the GPU ------------------------------------------------------------------------------
    def residents_on(self, gpu: int) -> list[Resident]:
        return [Resident(h.agent, h.gpu, 0, 0.0, self.ledger.footprint(h.kv_tokens), h.busy, False)
                for h in self.hosts if h.agent and h.gpu == gpu]

    def over_limit(self) -> set[int]:
        """GPUs holding more than their limit (a reading found memory the ledger missed)."""
        return {g for g in range(self.ledger.num_gpus)
                if self.ledger.over_limit(self.residents_on(g), g)}

    def live(self, gpu: int) -> list[HostSlot]:
        return [h for h in self.hosts if h.gpu == gpu and not h.dead and not h.reviving]

    def evict(self, gpu: int, why: str) -> int:
        """Park every idle resident of `gpu` (a pause where the engine cannot sleep)."""
        parks = [self._park(h, why) for h in self.hosts if h.gpu == gpu and h.agent and not h.busy]
        self._out += parks
        return len(parks)

    # -- update(event, now) -----------------------------------------------------------------
    def update(self, event: Update, now: float) -> None:
        """Fold one outcome into the facts; follow-up actions come with the next `schedule`."""
        match event:
            case act.Bound():
                self._bound(event, now)
            case act.Parked():
                self._parked(event, now)
            case act.Ran():
                self._ran(event, now)
            case act.CallFailed():
                self._call_failed(event, now)
            case act.HostLost():
                self._host_lost(self.host(event.host), list(event.batch), now)
            case act.HostStalled():
                self._stalled(event)
            case act.Fenced():
                self._fenced(event, now)
            case act.Reclaimed(host=host, agent=agent, error=error):
                self.host(host).call, self.host(host).reviving = "", False
                self.events.emit("pool.zombie_discarded", agent_id=agent, host=host, error=error)
            case act.Revived(host=host):
                self.host(host).reviving = False
            case act.NodeLost():
                self._node_lost(event.node, now)
            case act.StateReported(agent=agent, dispatch=dispatch, state=state):
                if dispatch and self.registry.get(agent).dispatch == dispatch:  # else: a late one
                    self.book.follow(agent, state)
            case act.TaskStarted(agent=agent, dispatch=dispatch, task=task):
                if dispatch and (entry := self.registry.get(agent)).dispatch == dispatch:
                    entry.running = task
            case act.Reading():
                self._reading(event)
            case act.EngineBase():
                self._engine_base(event)

    def _bound(self, ev: act.Bound, now: float) -> None:
        h, entry = self.host(ev.host), self.registry.get(ev.agent)
        h.call, h.fresh, entry.epoch, entry.last_used = "", True, ev.epoch, now
        tier = ev.info.get("tier", "disk") if ev.hot else "disk"
        if ev.hot and tier != "hot":  # the object was lost with its owner
            self.events.emit("pool.hot_miss", agent_id=ev.agent)
        h.kv_tokens = int(ev.info.get("kv_tokens", 0))
        self.events.extend(ev.info.get("events", []))
        self.book.move(ev.agent, Event.ACTIVATE)
        reported = AgentState(ev.info.get("state", AgentState.IDLE.value))
        if reported is not AgentState.FAILED:
            self.book.follow(ev.agent, reported)
        self.events.emit("pool.activated", agent_id=ev.agent, host=h.host_id, gpu=h.gpu,
                         epoch=ev.epoch, latency_s=round(ev.latency_s, 6),
                         kv_restored=ev.info.get("kv_restored", False), tier=tier)
        self.count("activations")
        if (move := entry.move) is not None:
            entry.move = None
            self.events.emit("pool.migrated", agent_id=ev.agent, src_host=move.src_host,
                             src_gpu=move.src_gpu, dst_host=h.host_id, dst_gpu=h.gpu, why=move.why,
                             unavailable_s=round(now - move.since, 6))
            self.count("migrations")
        if reported is AgentState.FAILED:
            self._agent_failed(h, ev.agent, "agent was FAILED in its checkpoint")

    def _parked(self, ev: act.Parked, now: float) -> None:
        h, entry = self.host(ev.host), self.registry.get(ev.agent)
        if h.pressed:  # the GPU's reading stands until the next says this memory is free
            extra = self.ledger.extra(h.gpu) + self.ledger.footprint(h.kv_tokens)
            self.ledger = self.ledger.with_extra(h.gpu, extra)
        h.call, h.agent = "", None
        entry.hot, entry.host = ev.hot, None
        self.book.move(ev.agent, Event.PARK)
        self.events.emit("pool.parked", agent_id=ev.agent, host=h.host_id, gpu=h.gpu,
                         why=ev.why or "room for another agent")
        self.count("parks")
        if entry.queue:
            self.registry.want(ev.agent)

    def _ran(self, ev: act.Ran, now: float) -> None:
        h, entry = self.host(ev.host), self.registry.get(ev.agent)
        h.call, h.kv_tokens, entry.dispatch = "", ev.kv_tokens, 0
        self.events.extend(list(ev.events))
        why = self._fold(h, ev.agent, list(ev.outcomes), now)
        if why is not None:  # parked before the Host is free again: no dispatch races it
            self._out.append(self._park(h, why))

    def _call_failed(self, ev: act.CallFailed, now: float) -> None:
        h, entry = self.host(ev.host), self.registry.get(ev.agent)
        h.call = ""
        if ev.stage == "park":  # a full disk, say: it stays resident, its commit intact
            self.events.emit("pool.park_failed", agent_id=ev.agent, host=h.host_id, reason=ev.error)
            self._retry(now, PARK_RETRY_S)
            return
        if ev.stage == "bind":
            self._agent_failed(h, ev.agent, f"activation failed: {ev.error}")
        elif not ev.stale:
            self._agent_failed(h, ev.agent, f"host error: {ev.error}", list(ev.batch))
        elif entry.epoch != ev.epoch or h.agent != ev.agent:
            # a zombie: the agent was fenced off this Host and lives on elsewhere
            self.events.emit("pool.zombie_discarded", agent_id=ev.agent, host=h.host_id)
        else:  # its own Host refused by a fence above its epoch: nothing of the batch committed
            h.agent = None
            self.book.to_dormant(ev.agent)
            self._out.append(act.Release(h.host_id))
            self.book.enqueue(ev.agent, list(ev.batch), front=True)
            self.events.emit("pool.stale_epoch_requeued", agent_id=ev.agent, host=h.host_id,
                             epoch=entry.epoch, requeued=len(ev.batch))

    def _stalled(self, ev: act.HostStalled) -> None:
        """Watchdog: the Host stays busy (and out of every plan) until its late answer; its
        agent is fenced off by epoch and its batch held until the fence is written."""
        h, entry = self.host(ev.host), self.registry.get(ev.agent)
        h.agent, h.call, h.reviving = None, "stalled", True
        entry.held, entry.dispatch = ev.batch, 0
        self.events.emit("pool.host_stalled", host=h.host_id, agent_id=ev.agent, stage=ev.stage,
                         after_s=self.cfg.watchdog_s, requeued=len(ev.batch))
        self._out.append(act.Fence(ev.agent, max(ev.epoch, entry.epoch)))

    def _fenced(self, ev: act.Fenced, now: float) -> None:
        entry = self.registry.get(ev.agent)
        held, entry.held = list(entry.held), ()
        if not ev.epoch:
            self._agent_failed(None, ev.agent, f"cannot fence a stalled Host: {ev.error}", held)
            return
        entry.epoch = ev.epoch
        src = self._by_id.get(entry.host or "")
        self.book.to_dormant(ev.agent)
        if src is not None:
            entry.avoid = src.host_id
        self.book.enqueue(ev.agent, held, front=True)
        if entry.queue and src is not None:  # it has work: unavailable until bound elsewhere
            entry.move = Move(src.host_id, src.gpu, now, "its Host stalled", False)
            self.registry.want(ev.agent)

    def _host_lost(self, h: HostSlot, batch: list[Item], now: float) -> None:
        """The Host process died: its agent falls back to its committed checkpoint. A death in a
        batch is charged to its tasks (`AgentBook.charge_tasks`); one outside a batch (bind,
        park) to the agent, which fails past `recovery.intensity` of them."""
        agent_id, h.agent, h.call = h.agent, None, ""
        h.lost += 1
        self.count("hosts_lost")
        self.events.emit("pool.host_lost", host=h.host_id, agent_id=agent_id, requeued=len(batch))
        self._retry(now, LOST_RETRY_S)
        if not h.reviving:
            h.reviving = True
            self._out.append(act.Revive(h.host_id))
        if not h.dead:
            self._out.append(act.CheckNode(h.host_id, h.node))
        if agent_id is None:
            return
        entry = self.registry.get(agent_id)
        running = entry.running if entry.dispatch else ""
        self.book.to_dormant(agent_id)  # its batch in flight ends here (dispatch 0)
        entry.avoid = h.host_id  # restored on another Host where one is free
        if batch:
            batch = self.book.charge_tasks(agent_id, batch, running)
        elif (failed := self.book.charge_agent(agent_id)) is not None:
            self._out += failed
            return
        self.book.enqueue(agent_id, batch, front=True)
        if entry.queue:  # it has work: it is unavailable until bound elsewhere
            entry.move = Move(h.host_id, h.gpu, now, "its Host died", False)
            self.registry.want(agent_id)

    def _node_lost(self, node: str, now: float) -> None:
        """A dead node's Hosts can never restart: they retire (once, whichever Host reports it) and
        their idle residents go back to DORMANT (busy ones come back through their call)."""
        if not (gone := [h for h in self.hosts if h.node == node and not h.dead]):
            return
        for h in gone:
            h.dead = True
        self.events.emit("pool.node_lost", node=node, hosts=len(gone),
                         residents=sum(1 for h in gone if h.agent))
        for h in gone:
            if h.agent and not h.busy:
                self._host_lost(h, [], now)

    def _reading(self, ev: act.Reading) -> None:
        residents = self.residents_on(ev.gpu)
        accounted = self.ledger.accounted(residents, ev.gpu)
        expected = ev.reserved_mib or float(accounted)
        self.ledger = self.ledger.with_extra(ev.gpu, round(ev.used_mib - expected))
        self.events.emit("pool.vram_reconciled", gpu=ev.gpu, ledger_mib=accounted,
                         expected_mib=round(expected), measured_mib=round(ev.used_mib),
                         diff_mib=round(ev.used_mib - expected), extra_mib=self.ledger.extra(ev.gpu),
                         reading=ev.source)

    def _engine_base(self, ev: act.EngineBase) -> None:
        configured = self.ledger.base_mib
        if ev.base_mib + self.ledger.agent_mib > self.ledger.limit_mib:
            self.events.emit("pool.engine_base_too_large", reported_mib=ev.base_mib,
                             limit_mib=self.ledger.limit_mib, kept_mib=configured)
            return
        self.ledger = replace(self.ledger, base_mib=ev.base_mib)
        self.events.emit("pool.engine_base", configured_mib=configured, reported_mib=ev.base_mib,
                         engine_rss_mib=ev.rss_mib, kv_bytes_per_token=self.ledger.kv_bytes_per_token)

    # -- folding a batch ---------------------------------------------------------------------
    def _fold(self, h: HostSlot, agent_id: str, outcomes: list[Outcome], now: float) -> str | None:
        """Results, a failed agent, tasks to migrate. Returns why the agent must move (then it
        is parked), else None."""
        entry = self.registry.get(agent_id)
        entry.last_used = now
        migrate = [(o.task, o.carry) for o in outcomes if o.result is None]
        results = [o.result for o in outcomes if o.result is not None]
        self.book.results += results
        if any(r.agent_state == AgentState.FAILED.value for r in results):
            self._agent_failed(h, agent_id, results[-1].error or "", migrate)
            return None
        if outcomes and (state := outcomes[-1].agent_state) is not None:
            self.book.follow(agent_id, state)  # DEGRADED stays; RECOVERING until it is parked
        self.book.went_through(agent_id, (o.task for o in outcomes))
        self.book.enqueue(agent_id, migrate, front=True)
        if not migrate:
            return None
        entry.avoid = h.host_id
        faults = sorted({o.fault.value for o in outcomes if o.result is None and o.fault})
        off_gpu = FaultClass.OOM.value in faults and self.ledger.num_gpus > 1
        why = f"tier 2: {', '.join(faults)}" + (" (memory pressure: off its GPU)" if off_gpu else "")
        entry.move = Move(h.host_id, h.gpu, now, why, off_gpu)
        self.events.emit("pool.migrating", agent_id=agent_id, src=h.host_id, gpu=h.gpu,
                         tasks=len(migrate), why=why)
        return why

    def _agent_failed(self, h: HostSlot | None, agent_id: str, reason: str,
                      batch: list[Item] | None = None) -> None:
        if h is not None and h.agent == agent_id:
            h.agent = None
            self._out.append(act.Release(h.host_id))
        self._out += self.book.fail(agent_id, reason, batch or [])

    def _retry(self, now: float, after_s: float) -> None:
        at = now + after_s
        self.retry_at = at if self.retry_at is None else min(self.retry_at, at)
