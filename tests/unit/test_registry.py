"""The manager's registry: compact dormant agents, full entries on first use, counts by state."""

from __future__ import annotations

import gc
import tracemalloc

from agents.models import AgentSpec, GenerationParams
from agents.state import AgentState
from pool.control.registry import DEFAULT_PROFILE, Registry, profile_of, spec_of

PERSONA = AgentSpec(agent_id="p", priority=3, system_prompt="You are a pirate.",
                    generation=GenerationParams(temperature=0.2, seed=7))


def _specs(n: int) -> list[AgentSpec]:
    return [AgentSpec(agent_id=f"agent-{i:06d}", priority=i % 10) for i in range(n)]


def test_profiles_round_trip_and_the_default_is_empty() -> None:
    plain = AgentSpec(agent_id="x", priority=2)
    assert profile_of(plain) == DEFAULT_PROFILE
    assert spec_of("x", 2, profile_of(plain)) == plain
    assert spec_of("p", 3, profile_of(PERSONA)) == PERSONA


def test_registered_agents_are_compact_until_first_used() -> None:
    reg = Registry()
    rows = reg.new_rows([*_specs(3), PERSONA, _specs(1)[0]])
    assert [r[0] for r in rows] == ["agent-000000", "agent-000001", "agent-000002", "p"]
    assert reg.add_rows(rows) == 4 and reg.add_rows(rows) == 0
    assert reg.new_rows(_specs(3)) == []
    assert len(reg) == 4 and "p" in reg and "q" not in reg
    assert reg.entries == {} and reg.counts()["dormant"] == 4
    assert reg.spec("p") == PERSONA and reg.spec("agent-000002").priority == 2
    entry = reg.get("p")  # first use: a full entry, in the DORMANT bucket
    assert entry.priority == 3 and entry.state is AgentState.DORMANT
    assert reg.spec("p") == PERSONA and reg.counts()["dormant"] == 4
    reg.set_state("agent-000001", AgentState.IDLE)
    assert reg.counts()["dormant"] == 3 and reg.counts()["idle"] == 1
    assert list(reg.ids(AgentState.DORMANT)) == ["agent-000000", "agent-000002", "p"]


def test_wanting_a_compact_agent_queues_it_by_priority() -> None:
    reg = Registry()
    reg.add_rows(reg.new_rows(_specs(10)))
    reg.unwant("agent-000009")  # never waiting: nothing to do
    reg.want("agent-000003")
    reg.want("agent-000009")
    assert reg.next_demands(5) == ["agent-000009", "agent-000003"] and reg.waiting() == 2


def test_add_keeps_its_old_meaning() -> None:
    reg = Registry()
    reg.add_rows(reg.new_rows(_specs(1)))
    entry = reg.add("agent-000000", 4)  # made full; the compact row is gone
    assert entry.priority == 4 and len(reg) == 1 and reg.counts()["dormant"] == 1


def test_a_compact_dormant_agent_costs_well_under_a_kilobyte() -> None:
    n = 20_000
    reg = Registry()
    specs = _specs(n)
    rows = reg.new_rows(specs)
    ids = [r[0] for r in rows]  # held by the caller anyway: the registry keeps the same strings
    del specs
    gc.collect()
    tracemalloc.start()
    reg.add_rows(rows)
    del rows
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(reg) == len(ids) == n
    assert held / n < 120, f"{held / n:.0f} bytes per agent"
