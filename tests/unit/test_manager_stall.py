"""The PoolManager and its Host wrapper without Ray: a Host silent in `run` past the watchdog
comes back from `HostClient.run` as `Stalled`, and the manager fences the agent off, requeues
its batch, and discards the Host's late answer."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from agents.config import PoolConfig
from agents.events import EventSink
from agents.models import AgentRecord, AgentSpec, Task
from agents.state import AgentState
from pool.control.hosts import HostClient
from pool.control.manager import PoolManager
from pool.control.registry import Registry
from pool.control.slots import Slot
from pool.store.checkpoint import CheckpointStore

AID = "a1"


class _Method:
    def __init__(self, fut: Future[Any]) -> None:
        self.fut, self.calls = fut, 0

    def options(self, **_: Any) -> _Method:
        return self

    def remote(self, *_: Any) -> Any:
        self.calls += 1
        return type("Ref", (), {"future": lambda _self: self.fut})()


def _answered(value: Any) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


class _Host:
    def __init__(self) -> None:
        self.run = _Method(Future())  # silent until the test answers
        self.release = _Method(_answered(None))


def _manager(root: Path) -> Any:
    cls = PoolManager.__ray_actor_class__  # type: ignore[attr-defined]
    m = cls.__new__(cls)  # the plain class: no Ray, no __init__ (which creates the monitor)
    m.cfg = PoolConfig(watchdog_s=0.05)
    m.store = CheckpointStore(root)
    m.store.write(AgentRecord(spec=AgentSpec(agent_id=AID)), epoch=2)
    m.registry = Registry()
    m.registry.add(AID, 5)
    m.queues, m.moving, m.exclude, m.results = {}, {}, {}, []
    m.reviving = set()
    m.events = EventSink("test")
    m._wake = asyncio.Event()
    return m


def test_a_stalled_run_fences_the_agent_off_requeues_its_batch_and_discards_the_late_answer(
    tmp_path: Path,
) -> None:
    m, host = _manager(tmp_path), _Host()
    slot = Slot(HostClient(host, "h0", m.cfg.watchdog_s), 0)
    slot.agent, slot.busy = AID, True
    entry = m.registry.get(AID)
    entry.host, entry.epoch = "h0", 2
    batch = [(Task(task_id=f"t{i}", agent_id=AID, prompt="p"), None) for i in range(2)]

    async def go() -> None:
        collect = asyncio.ensure_future(m._collect(slot, AID, batch, 1.0))
        while AID not in m.moving:  # the watchdog fires: the agent moves on
            await asyncio.sleep(0.01)
        assert "h0" in m.reviving and slot.busy and slot.agent is None
        assert [t.task_id for t, _ in m.queues[AID]] == ["t0", "t1"]
        assert entry.state is AgentState.DORMANT and entry.epoch > 2 and m.exclude[AID] == "h0"
        assert not host.release.calls, "the Host is released only once it answers"
        host.run.fut.set_result(([], [], 0))  # the zombie answers at last: discarded
        await collect

    asyncio.run(go())
    assert not slot.busy and "h0" not in m.reviving and host.release.calls == 1
    assert m.results == [], "nothing of the zombie's answer is folded"
    names = [e["event"] for e in m.events.drain()]
    assert names == ["pool.host_stalled", "pool.zombie_discarded"]
