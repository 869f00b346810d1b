"""The PoolManager's registry: a small entry per agent, kept in buckets by state.

A dormant agent costs only its entry here (priority, state, epoch, a hot-tier reference) and its
checkpoint on disk. Counts come from the buckets, never from a second counter that can drift.
Agents with queued work wait in per-priority FIFO queues; `next_demands` serves the highest
priority first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from agents.state import AgentState


class Entry:
    __slots__ = ("priority", "state", "epoch", "hot", "last_used", "host")

    def __init__(self, priority: int, state: AgentState = AgentState.DORMANT, epoch: int = 0):
        self.priority = priority
        self.state = state
        self.epoch = epoch
        self.hot: Any = None  # ObjectRef of the last parked checkpoint (hot tier), or None
        self.last_used = 0.0
        self.host: str | None = None  # Host id while resident


class Registry:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.buckets: dict[AgentState, set[str]] = {s: set() for s in AgentState}
        self._waiting: dict[int, OrderedDict[str, None]] = {p: OrderedDict() for p in range(10)}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self.entries

    def get(self, agent_id: str) -> Entry:
        return self.entries[agent_id]

    def add(self, agent_id: str, priority: int, state: AgentState = AgentState.DORMANT) -> Entry:
        entry = self.entries.get(agent_id)
        if entry is None:
            entry = self.entries[agent_id] = Entry(priority, state)
            self.buckets[state].add(agent_id)
        return entry

    def set_state(self, agent_id: str, state: AgentState) -> None:
        entry = self.entries[agent_id]
        self.buckets[entry.state].discard(agent_id)
        entry.state = state
        self.buckets[state].add(agent_id)

    def counts(self) -> dict[str, int]:
        return {state.value: len(ids) for state, ids in self.buckets.items()}

    # -- demand ---------------------------------------------------------------------------
    def want(self, agent_id: str) -> None:
        """The agent has work and is not resident: queue it for activation."""
        self._waiting[self.entries[agent_id].priority][agent_id] = None

    def unwant(self, agent_id: str) -> None:
        self._waiting[self.entries[agent_id].priority].pop(agent_id, None)

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
        return iter(sorted(self.buckets[state]))
