"""The agent state machine: every (state, event) pair against the one table."""

import itertools

import pytest

from agents.state import (
    RESIDENT,
    TRANSITIONS,
    AgentState,
    Event,
    IllegalTransition,
    next_state,
    table_markdown,
)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(AgentState, Event)))
def test_every_pair_follows_the_table(state: AgentState, event: Event) -> None:
    legal = TRANSITIONS[state]
    if event in legal:
        assert next_state(state, event) is legal[event]
    else:
        with pytest.raises(IllegalTransition) as err:
            next_state(state, event)
        assert err.value.state is state and err.value.event is event
        assert state.value in str(err.value)


def test_illegal_transition_changes_nothing() -> None:
    state = AgentState.FAILED
    with pytest.raises(IllegalTransition):
        state = next_state(state, Event.START)
    assert state is AgentState.FAILED


def test_failed_only_leaves_by_release() -> None:
    assert TRANSITIONS[AgentState.FAILED] == {Event.RELEASE: AgentState.DORMANT}


def test_every_state_is_reachable_from_dormant() -> None:
    seen, frontier = {AgentState.DORMANT}, [AgentState.DORMANT]
    while frontier:
        for target in TRANSITIONS[frontier.pop()].values():
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(AgentState)


def test_a_lost_host_returns_residents_to_their_checkpoint() -> None:
    for state in RESIDENT:
        assert next_state(state, Event.HOST_LOST) is AgentState.DORMANT


def test_docs_come_from_the_table() -> None:
    doc = table_markdown()
    assert doc.count("\n") == 1 + sum(len(m) for m in TRANSITIONS.values())
