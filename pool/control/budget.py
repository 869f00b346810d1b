"""The residency plan: which dormant agents to activate and which residents to park.

Theory of operation. A GPU holds the engine base (weights, CUDA context) plus the footprint of
each resident agent, and at most `slots_per_gpu` residents (one per warm Host). The `VramLedger`
caps what may be used at `budget_mib * watermark`; `extra_mib` is memory a GPU was measured to
hold beyond what the ledger accounts for (reconciliation with pynvml), counted as used.

`plan` first sheds: on a GPU that is over its limit (its measured extra grew), it parks idle
residents in eviction order until the GPU is back within it; these parks are also listed in
`Plan.shed`, and the pool migrates their work to another GPU. It then serves the demands highest
priority first (stable within a priority) as a pure fold over a working copy of the residents: a
demand goes to the GPU with the most headroom that has a free slot and room; failing that, it
parks the cheapest set of residents on one GPU that makes room; failing that, it is deferred. A
demand that moves off a GPU under memory pressure (`avoid_gpu`) goes there only when no other GPU
can take it. A GPU over its limit when the plan starts takes no one in that plan: the pool counts
memory freed by shedding only once a new reading shows it, so an agent placed there would only
be shed again. A demand never crosses the budget, so the invariant "on every GPU, residents <= slots
and base + extra + footprints <= limit" holds after `apply_plan` whenever it held before, and a
GPU over its limit is brought back within it unless only busy residents are left there.

Who may be parked for a demand: residents that are not busy, were not activated in the same plan,
and are not wanted residents of higher priority than the demand. They go in eviction order: not
wanted before wanted, then lowest priority, then least recently used. A resident parked in this
plan is gone from the working copy, so it is never parked twice nor re-activated in the same plan.

`apply_plan` is the fold that the pool applies once the plan has been carried out; there is no
clock here, `now` is an argument.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from agents.config import PoolConfig
from agents.engines.gpumem import MIB


@dataclass(frozen=True, slots=True)
class Resident:
    """An agent bound to a Host on a GPU."""

    agent_id: str
    gpu: int  # index of the GPU, 0 <= gpu < num_gpus
    priority: int  # 0..9; 9 is parked last
    last_used: float  # time of last use, for least-recently-used eviction
    footprint_mib: int  # KV cache + activations counted against the ledger
    busy: bool  # running a task: never parked
    wanted: bool  # has queued work


@dataclass(frozen=True, slots=True)
class Demand:
    """A dormant agent that has work and asks to be resident."""

    agent_id: str
    priority: int  # 0..9; served highest first
    footprint_mib: int  # what it will cost once resident
    avoid_gpu: int | None = None  # migrating off this GPU (memory pressure): the last resort


@dataclass(frozen=True, slots=True)
class Placement:
    """Activate `agent_id` on `gpu`."""

    agent_id: str
    gpu: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What the pool should do: park first, then activate."""

    activate: tuple[Placement, ...]  # in the order the demands were served
    park: tuple[str, ...]  # agent ids of residents to checkpoint and unbind
    deferred: tuple[str, ...]  # demands that could not be placed now
    shed: tuple[str, ...] = ()  # the parks that bring a GPU over its limit back within it


@dataclass(frozen=True, slots=True)
class VramLedger:
    """The VRAM budget of each GPU and the slots it has."""

    budget_mib: int  # VRAM of one GPU
    watermark: float  # share of the budget the ledger may fill
    base_mib: int  # engine footprint per GPU: weights + context
    num_gpus: int  # GPUs, indexed 0..num_gpus-1
    slots_per_gpu: int  # residents (Hosts) per GPU
    extra_mib: tuple[int, ...] = ()  # per GPU: measured use the ledger does not account for
    agent_mib: int = 0  # what an activation reserves for one more agent (llama.cpp: a full slot)
    kv_bytes_per_token: int = 0  # llama.cpp: a resident counts its slot's tokens x this; 0: agent_mib

    @classmethod
    def from_config(cls, cfg: PoolConfig) -> VramLedger:
        return cls(
            budget_mib=cfg.budget_mib,
            watermark=cfg.watermark,
            base_mib=cfg.engine_base_mib,
            num_gpus=cfg.num_gpus,
            slots_per_gpu=cfg.slots_per_gpu,
            agent_mib=cfg.agent_kv_mib,
        )

    @property
    def limit_mib(self) -> float:
        return self.budget_mib * self.watermark

    def footprint(self, kv_tokens: int) -> int:
        """MiB a resident holds: its slot's tokens of KV when they are counted, else agent_mib."""
        if not self.kv_bytes_per_token:
            return self.agent_mib
        return -(-kv_tokens * self.kv_bytes_per_token // MIB)  # rounded up

    def extra(self, gpu: int) -> int:
        return self.extra_mib[gpu] if gpu < len(self.extra_mib) else 0

    def with_extra(self, gpu: int, mib: int) -> VramLedger:
        """The ledger once `gpu` was measured to hold `mib` beyond what it accounts for."""
        extra = list(self.extra_mib) + [0] * (self.num_gpus - len(self.extra_mib))
        extra[gpu] = max(0, mib)
        return replace(self, extra_mib=tuple(extra))

    def accounted(self, residents: Iterable[Resident], gpu: int) -> int:
        """What the ledger itself accounts for on `gpu`: the engine base and the residents."""
        return self.base_mib + sum(r.footprint_mib for r in residents if r.gpu == gpu)

    def used(self, residents: Iterable[Resident], gpu: int) -> int:
        return self.accounted(residents, gpu) + self.extra(gpu)

    def over_limit(self, residents: Iterable[Resident], gpu: int) -> bool:
        """Whether `gpu` holds more than the limit (a reading found memory the ledger missed)."""
        return self.used(residents, gpu) > self.limit_mib

    def headroom(self, residents: Iterable[Resident], gpu: int) -> float:
        """Share of the limit still free on `gpu`; negative when over it."""
        return 1.0 - self.used(residents, gpu) / self.limit_mib

    def fits(self, residents: Sequence[Resident], gpu: int, footprint_mib: int) -> bool:
        """Whether one more resident of `footprint_mib` fits on `gpu` (slot and memory)."""
        on_gpu = [r for r in residents if r.gpu == gpu]
        room = self.used(on_gpu, gpu) + footprint_mib <= self.limit_mib
        return room and len(on_gpu) < self.slots_per_gpu


@dataclass(frozen=True, slots=True)
class _Working:
    """The fold's accumulator: residents as the plan so far leaves them."""

    residents: tuple[Resident, ...]
    activate: tuple[Placement, ...] = ()
    park: tuple[str, ...] = ()
    deferred: tuple[str, ...] = ()

    def activated(self) -> frozenset[str]:
        return frozenset(p.agent_id for p in self.activate)


def served_order(demand: Iterable[Demand]) -> tuple[Demand, ...]:
    """Demands highest priority first, stable within a priority; a repeated agent id is dropped."""
    seen: set[str] = set()
    out: list[Demand] = []
    for d in sorted(demand, key=lambda d: -d.priority):
        if d.agent_id not in seen:
            seen.add(d.agent_id)
            out.append(d)
    return tuple(out)


def plan(residents: Sequence[Resident], demand: Sequence[Demand], ledger: VramLedger) -> Plan:
    """Activations and parkings that serve `demand` without crossing the ledger."""
    resident_ids = {r.agent_id for r in residents}
    pressed = frozenset(g for g in range(ledger.num_gpus) if ledger.over_limit(residents, g))
    state = _shed(_Working(residents=tuple(residents)), ledger)
    shed = state.park
    for d in served_order(demand):
        if d.agent_id not in resident_ids:
            state = _serve(state, d, ledger, pressed)
    return Plan(activate=state.activate, park=state.park, deferred=state.deferred, shed=shed)


def _shed(state: _Working, ledger: VramLedger) -> _Working:
    """Park idle residents of every GPU over its limit, in eviction order, until it is within."""
    for gpu in range(ledger.num_gpus):
        idle = sorted((r for r in state.residents if r.gpu == gpu and not r.busy and r.footprint_mib),
                      key=lambda r: (r.wanted, r.priority, r.last_used, r.agent_id))
        gone: list[str] = []
        for r in idle:
            if not ledger.over_limit(state.residents, gpu):
                break
            gone.append(r.agent_id)
            state = replace(state, residents=tuple(x for x in state.residents if x is not r))
        state = replace(state, park=(*state.park, *gone))
    return state


def _serve(state: _Working, d: Demand, ledger: VramLedger, pressed: frozenset[int]) -> _Working:
    if ledger.base_mib + d.footprint_mib > ledger.limit_mib:
        return replace(state, deferred=(*state.deferred, d.agent_id))
    gpus = [g for g in range(ledger.num_gpus) if g not in pressed]
    choice = _place(state, d, ledger, [g for g in gpus if g != d.avoid_gpu])
    if choice is None and d.avoid_gpu in gpus:  # nowhere else: its own GPU after all
        choice = _place(state, d, ledger, [d.avoid_gpu])
    if choice is None:
        return replace(state, deferred=(*state.deferred, d.agent_id))
    gpu, victims = choice
    gone = {v.agent_id for v in victims}
    # The activated agent is held as "just used"; it is excluded from eviction by id anyway.
    new = Resident(d.agent_id, gpu, d.priority, math.inf, d.footprint_mib, False, True)
    kept = tuple(r for r in state.residents if r.agent_id not in gone)
    return replace(
        state,
        residents=(*kept, new),
        activate=(*state.activate, Placement(d.agent_id, gpu)),
        park=(*state.park, *(v.agent_id for v in victims)),
    )


def _place(
    state: _Working, d: Demand, ledger: VramLedger, gpus: Sequence[int]
) -> tuple[int, tuple[Resident, ...]] | None:
    """One of `gpus` for `d` and the residents to park there: a free GPU first, else the
    cheapest eviction."""
    gpu = _free_gpu(state.residents, d, ledger, gpus)
    if gpu is not None:
        return gpu, ()
    return _cheapest_eviction(state, d, ledger, gpus)


def _free_gpu(
    residents: Sequence[Resident], d: Demand, ledger: VramLedger, gpus: Sequence[int]
) -> int | None:
    """The GPU with the most headroom (lowest index on ties) that takes `d` as it stands."""
    fit = [g for g in gpus if ledger.fits(residents, g, d.footprint_mib)]
    if not fit:
        return None
    return max(fit, key=lambda g: (ledger.headroom(residents, g), -g))


def _cheapest_eviction(
    state: _Working, d: Demand, ledger: VramLedger, gpus: Sequence[int]
) -> tuple[int, tuple[Resident, ...]] | None:
    """Over `gpus`, the eviction that parks the fewest wanted residents, then the fewest
    residents, then the least important, then leaves the most headroom."""
    options: list[tuple[tuple[int, int, int, float, int], int, tuple[Resident, ...]]] = []
    for gpu in gpus:
        victims = _eviction(state, d, ledger, gpu)
        if victims is None:
            continue
        gone = {v.agent_id for v in victims}
        after = [r for r in state.residents if r.agent_id not in gone]
        top = max(v.priority for v in victims)
        cost = (
            sum(v.wanted for v in victims),
            len(victims),
            top,
            -ledger.headroom(after, gpu),
            gpu,
        )
        options.append((cost, gpu, victims))
    if not options:
        return None
    _, gpu, victims = min(options, key=lambda o: o[0])
    return gpu, victims


def _eviction(state: _Working, d: Demand, ledger: VramLedger, gpu: int) -> tuple[Resident, ...] | None:
    """The residents of `gpu` to park, in eviction order, so that `d` fits; None if none do."""
    activated = state.activated()
    candidates = sorted(
        (
            r
            for r in state.residents
            if r.gpu == gpu
            and not r.busy
            and r.agent_id not in activated
            and not (r.wanted and r.priority > d.priority)
        ),
        key=lambda r: (r.wanted, r.priority, r.last_used, r.agent_id),
    )
    for n in range(1, len(candidates) + 1):
        if _fits_without(state.residents, candidates[:n], gpu, d, ledger):
            return _trim(state.residents, candidates[:n], gpu, d, ledger)
    return None


def _trim(
    residents: Sequence[Resident],
    victims: Sequence[Resident],
    gpu: int,
    d: Demand,
    ledger: VramLedger,
) -> tuple[Resident, ...]:
    """Keep any victim that turns out not to be needed, the most valuable first.

    A prefix of the eviction order can over-shoot: a small idle resident followed by a large one
    that alone makes room. Parking fewer agents is cheaper (each one is a checkpoint and a reload).
    """
    chosen = list(victims)
    for v in reversed(victims):
        rest = [c for c in chosen if c is not v]
        if _fits_without(residents, rest, gpu, d, ledger):
            chosen = rest
    return tuple(chosen)


def _fits_without(
    residents: Sequence[Resident],
    victims: Sequence[Resident],
    gpu: int,
    d: Demand,
    ledger: VramLedger,
) -> bool:
    gone = {v.agent_id for v in victims}
    return ledger.fits([r for r in residents if r.agent_id not in gone], gpu, d.footprint_mib)


def apply_plan(
    residents: Sequence[Resident], plan: Plan, demand: Sequence[Demand], now: float
) -> tuple[Resident, ...]:
    """The residents once `plan` is carried out: parked ones gone, activated ones idle and wanted.

    Raises ValueError when the plan does not match its inputs (a bug in the caller, not the data).
    """
    by_id = {d.agent_id: d for d in served_order(demand)}
    parked = set(plan.park)
    strangers = parked - {r.agent_id for r in residents}
    if strangers:
        raise ValueError(f"plan parks agents that are not resident: {sorted(strangers)}")
    missing = [p.agent_id for p in plan.activate if p.agent_id not in by_id]
    if missing:
        raise ValueError(f"plan activates agents without a demand: {missing}")
    kept = tuple(r for r in residents if r.agent_id not in parked)
    new = tuple(_activated(by_id[p.agent_id], p.gpu, now) for p in plan.activate)
    return kept + new


def _activated(d: Demand, gpu: int, now: float) -> Resident:
    return Resident(
        agent_id=d.agent_id,
        gpu=gpu,
        priority=d.priority,
        last_used=now,
        footprint_mib=d.footprint_mib,
        busy=False,
        wanted=True,
    )
