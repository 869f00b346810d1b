"""The PoolManager's registry: every registered agent, in buckets by state, compact while dormant.

An agent that has not been used since it was registered (no work queued, never bound) costs one
dict slot here: its id mapped to a small int packing its priority and its profile, the index of
its spec's persona and sampling settings (everything but id and priority) among the distinct
ones seen, which are kept once (`pool.store.agent_table` holds the same rows durably). The first use of
an agent (`get`) turns it into a full `Entry` (state, epoch, hot-tier reference, Host), in the
bucket of its state; it stays one. Counts come from the buckets and the compact map, never from a
second counter that can drift. Agents with queued work wait in per-priority FIFO queues;
`next_demands` serves the highest priority first.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from typing import Any

from agents.models import AgentSpec, GenerationParams
from agents.state import AgentState, Event, next_state

Row = tuple[str, int, str]  # (agent_id, priority, profile): a row of the agent table
DEFAULT_PROFILE = ""  # the spec's persona and sampling settings are the defaults
_DEFAULTS = AgentSpec(agent_id="_")
_PRIORITY_BITS = 4  # priorities 0..9 fit; the profile index sits above them
_CACHED_PROFILES = 1024


def profile_of(spec: AgentSpec) -> str:
    """The spec without its id and priority, as JSON ("" for the defaults): shared by many agents."""
    if spec.system_prompt == _DEFAULTS.system_prompt and spec.generation == _DEFAULTS.generation:
        return DEFAULT_PROFILE
    return json.dumps({"system_prompt": spec.system_prompt,
                       "generation": spec.generation.model_dump(mode="json")}, sort_keys=True)


def spec_of(agent_id: str, priority: int, profile: str) -> AgentSpec:
    """The spec a row stands for (the inverse of `profile_of`)."""
    if profile == DEFAULT_PROFILE:
        return AgentSpec(agent_id=agent_id, priority=priority)
    doc = json.loads(profile)
    return AgentSpec(agent_id=agent_id, priority=priority, system_prompt=doc["system_prompt"],
                     generation=GenerationParams.model_validate(doc["generation"]))


class Entry:
    """Every fact the pool keeps of one agent in use (the scheduler's one record per agent)."""

    __slots__ = ("priority", "state", "epoch", "hot", "last_used", "host", "profile", "queue",
                 "avoid", "crashes", "move", "dispatch", "running", "held")

    def __init__(self, priority: int, state: AgentState = AgentState.DORMANT, epoch: int = 0,
                 profile: int = 0):
        self.priority = priority
        self.state = state
        self.epoch = epoch
        self.hot: Any = None  # ObjectRef of the last parked checkpoint (hot tier), or None
        self.last_used = 0.0
        self.host: str | None = None  # Host id while resident
        self.profile = profile  # index into the registry's distinct profiles
        self.queue: deque[Any] = deque()  # its tasks waiting to run, oldest first
        self.avoid: str | None = None  # a Host it must not return to (it failed it there)
        self.crashes = 0  # Hosts lost under it outside a batch, in a row
        self.move: Any = None  # a `Move` while it migrates, until bound on its new Host
        self.dispatch = 0  # the batch in flight on its Host (0: none)
        self.running = ""  # the task of that batch its Host said it started last ("": not said)
        self.held: tuple[Any, ...] = ()  # a stalled batch, requeued once its fence is written


class Registry:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}  # agents used since registration
        self._compact: dict[str, int] = {}  # DORMANT, unused: priority | profile << 4
        self._profiles: list[str] = [DEFAULT_PROFILE]
        self._profile_ix: dict[str, int] = {DEFAULT_PROFILE: 0}
        self._profile_cache: dict[tuple[str, GenerationParams], str] = {}
        self.buckets: dict[AgentState, set[str]] = {s: set() for s in AgentState}
        self._waiting: dict[int, OrderedDict[str, None]] = {p: OrderedDict() for p in range(10)}

    def __len__(self) -> int:
        return len(self.entries) + len(self._compact)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self.entries or agent_id in self._compact

    def get(self, agent_id: str) -> Entry:
        """The agent's full entry, made on its first use (KeyError for an unknown agent)."""
        entry = self.entries.get(agent_id)
        if entry is None:
            packed = self._compact.pop(agent_id)
            entry = self.entries[agent_id] = Entry(
                packed & 0xF, profile=packed >> _PRIORITY_BITS)
            self.buckets[AgentState.DORMANT].add(agent_id)
        return entry

    def add(self, agent_id: str, priority: int, state: AgentState = AgentState.DORMANT) -> Entry:
        entry = self.entries.get(agent_id)
        if entry is None:
            entry = self.entries[agent_id] = Entry(priority, state)
            self._compact.pop(agent_id, None)
            self.buckets[state].add(agent_id)
        return entry

    # -- registration (compact) -------------------------------------------------------------
    def new_rows(self, specs: Iterable[AgentSpec]) -> list[Row]:
        """Rows for the specs of agents not registered yet (the first of duplicates)."""
        rows: dict[str, Row] = {}
        for spec in specs:
            agent_id = spec.agent_id
            if agent_id not in rows and agent_id not in self:
                rows[agent_id] = (agent_id, spec.priority, self._profile(spec))
        return list(rows.values())

    def add_rows(self, rows: Iterable[Row]) -> int:
        """Register agents compactly (those already known are left as they are); how many new."""
        compact, before = self._compact, len(self)
        for agent_id, priority, profile in rows:
            if agent_id not in self.entries:
                compact.setdefault(agent_id, priority | self._intern(profile) << _PRIORITY_BITS)
        return len(self) - before

    def spec(self, agent_id: str) -> AgentSpec:
        """The spec the agent was registered with."""
        entry = self.entries.get(agent_id)
        if entry is not None:
            return spec_of(agent_id, entry.priority, self._profiles[entry.profile])
        packed = self._compact[agent_id]
        return spec_of(agent_id, packed & 0xF, self._profiles[packed >> _PRIORITY_BITS])

    def _profile(self, spec: AgentSpec) -> str:
        key = (spec.system_prompt, spec.generation)
        profile = self._profile_cache.get(key)
        if profile is None:
            profile = profile_of(spec)
            if len(self._profile_cache) < _CACHED_PROFILES:  # distinct personas: no cache
                self._profile_cache[key] = profile
        return profile

    def _intern(self, profile: str) -> int:
        ix = self._profile_ix.get(profile)
        if ix is None:
            ix = self._profile_ix[profile] = len(self._profiles)
            self._profiles.append(profile)
        return ix

    # -- state ----------------------------------------------------------------------------
    def set_state(self, agent_id: str, state: AgentState) -> None:
        entry = self.get(agent_id)
        self.buckets[entry.state].discard(agent_id)
        entry.state = state
        self.buckets[state].add(agent_id)

    def move(self, agent_id: str, event: Event) -> AgentState:
        """Apply `event` through the transition table (IllegalTransition changes nothing)."""
        state = next_state(self.get(agent_id).state, event)
        self.set_state(agent_id, state)
        return state

    def counts(self) -> dict[str, int]:
        counts = {state.value: len(ids) for state, ids in self.buckets.items()}
        counts[AgentState.DORMANT.value] += len(self._compact)
        return counts

    # -- demand ---------------------------------------------------------------------------
    def want(self, agent_id: str) -> None:
        """The agent has work and is not resident: queue it for activation."""
        self._waiting[self.get(agent_id).priority][agent_id] = None

    def unwant(self, agent_id: str) -> None:
        entry = self.entries.get(agent_id)
        if entry is not None:  # a compact agent never waits
            self._waiting[entry.priority].pop(agent_id, None)

    def next_demands(self, limit: int) -> list[str]:
        out: list[str] = []
        for priority in range(9, -1, -1):
            for agent_id in self._waiting[priority]:
                out.append(agent_id)
                if len(out) == limit:
                    return out
        return out

    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def ids(self, state: AgentState) -> Iterator[str]:
        ids = self.buckets[state]
        if state is AgentState.DORMANT:
            return iter(sorted(ids | self._compact.keys()))
        return iter(sorted(ids))
