"""Object store pressure: parked agents' hot-tier copies far exceed a small object store.

Ray spills what does not fit to disk, and a hot copy that is gone anyway falls back to the agent's
durable checkpoint (`pool.hot_miss`): nothing is lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from chaos_harness import Run, assert_checks, settings, start_ray

from agents.models import AgentRecord, AgentSpec
from pool.store.checkpoint import CheckpointStore

pytestmark = [pytest.mark.chaos, pytest.mark.integration]
STORE_MIB = 80  # Ray's floor is about 75 MiB
AGENTS, NOTE_BYTES = 120, 1024 * 1024  # 120 MiB of hot copies into 80 MiB


@pytest.fixture(scope="module")
def small_store_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    start_ray(tmp_path_factory.mktemp("flags"), object_store_mib=STORE_MIB)
    yield
    ray.shutdown()


def test_many_parked_agents_with_a_small_object_store_lose_nothing(
    small_store_ray: None, tmp_path: Path
) -> None:
    run = Run(tmp_path, 480, AGENTS, settings(pool={"batch_per_agent": 2}), seed=21)
    store = CheckpointStore(run.store_root())
    for i in range(AGENTS):
        spec = AgentSpec(agent_id=f"agent-{i:06d}", priority=i % 10)
        store.write(AgentRecord(spec=spec, notes=(f"{i:06d}" + "x" * NOTE_BYTES,)), 0)
    summary = run.start().join()
    parked = run.events("pool.parked")
    assert len(parked) * NOTE_BYTES > STORE_MIB * 2**20, "more hot copies than the store holds"
    assert summary["tasks"] == run.n
    for i in range(0, AGENTS, 17):  # the big memory survived every round trip
        record, _ = store.read(f"agent-{i:06d}")
        assert record.notes[0].startswith(f"{i:06d}") and len(record.notes[0]) == NOTE_BYTES + 6
    assert_checks(run)
