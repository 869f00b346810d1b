"""Agent lifecycle as one transition table.

An agent is DORMANT (checkpoint only) until a Host binds it (IDLE). It runs tasks (RUNNING),
may finish below the healthy bar (DEGRADED) or need repair (RECOVERING), and ends in FAILED only
when recovery gives up; a person releases it back to DORMANT. A lost Host sends a resident agent
back to DORMANT: its last committed checkpoint is the truth. Every legal move is in `TRANSITIONS`;
anything else raises `IllegalTransition` and changes nothing.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType
from typing import Final


class AgentState(StrEnum):
    DORMANT = "dormant"
    IDLE = "idle"
    RUNNING = "running"
    DEGRADED = "degraded"
    RECOVERING = "recovering"
    FAILED = "failed"


class Event(StrEnum):
    ACTIVATE = "activate"  # checkpoint bound to a Host
    START = "start"  # a task begins
    SUCCEED = "succeed"  # healthy result
    DEGRADE = "degrade"  # result below the healthy bar
    RECOVER = "recover"  # recovery action begins
    HEALED = "healed"  # recovery produced a healthy result
    PARK = "park"  # checkpointed and unbound
    HOST_LOST = "host_lost"  # the Host died; fall back to the committed checkpoint
    FAIL = "fail"  # recovery gave up (tier 3) or the agent cannot be loaded
    RELEASE = "release"  # a person released a FAILED agent


S, E = AgentState, Event

TRANSITIONS: Final = MappingProxyType(
    {
        S.DORMANT: {E.ACTIVATE: S.IDLE, E.FAIL: S.FAILED},
        S.IDLE: {E.START: S.RUNNING, E.PARK: S.DORMANT, E.HOST_LOST: S.DORMANT, E.FAIL: S.FAILED},
        S.RUNNING: {
            E.SUCCEED: S.IDLE,
            E.DEGRADE: S.DEGRADED,
            E.RECOVER: S.RECOVERING,
            E.HOST_LOST: S.DORMANT,
            E.FAIL: S.FAILED,
        },
        S.DEGRADED: {
            E.START: S.RUNNING,
            E.RECOVER: S.RECOVERING,
            E.PARK: S.DORMANT,
            E.HOST_LOST: S.DORMANT,
            E.FAIL: S.FAILED,
        },
        S.RECOVERING: {
            E.HEALED: S.IDLE,
            E.PARK: S.DORMANT,  # tier-2 migration: parked here, activated on another Host
            E.DEGRADE: S.DEGRADED,
            E.START: S.RUNNING,
            E.HOST_LOST: S.DORMANT,
            E.FAIL: S.FAILED,
        },
        S.FAILED: {E.RELEASE: S.DORMANT},
    }
)

RESIDENT: Final = frozenset({S.IDLE, S.RUNNING, S.DEGRADED, S.RECOVERING})


class IllegalTransition(ValueError):
    """An event that the current state does not accept."""

    def __init__(self, state: AgentState, event: Event) -> None:
        super().__init__(f"illegal transition: {event.value} in state {state.value}")
        self.state = state
        self.event = event

    def __reduce__(self) -> tuple[object, ...]:  # survive pickling across Ray processes
        return (type(self), (self.state, self.event))


def next_state(state: AgentState, event: Event) -> AgentState:
    """The state after `event`; raises `IllegalTransition` when the table has no such move."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(state, event) from None


def table_markdown() -> str:
    """The transition table as Markdown, for docs generated from the one source of truth."""
    rows = ["| state | event | next |", "|---|---|---|"]
    for state, moves in TRANSITIONS.items():
        rows += [f"| {state} | {event} | {target} |" for event, target in moves.items()]
    return "\n".join(rows)
