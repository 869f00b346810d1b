"""The PoolManager's epochs without Ray: a fresh manager after a quarantined newest version, and a
Host refused with StaleEpoch that was not fenced off (its tasks are requeued, never dropped)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ray.exceptions import RayTaskError

from agents.config import PoolConfig
from agents.errors import StaleEpoch
from agents.events import EventSink
from agents.models import AgentRecord, AgentSpec, Task
from agents.state import AgentState
from pool.control.hosts import HostClient
from pool.control.manager import PoolManager
from pool.control.registry import Registry
from pool.control.slots import Slot
from pool.store.checkpoint import CheckpointStore

AID = "a1"


class _Calls:
    """A fake actor method: records its arguments, answers with `answer` (awaitable and `.future()`)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> Any:
        self.calls.append(args)
        if isinstance(self.answer, Future):  # pending until the test settles it
            return _Ref(self.answer)
        fut: Future[Any] = Future()
        if isinstance(self.answer, BaseException):
            fut.set_exception(self.answer)
        else:
            fut.set_result(self.answer)
        return _Ref(fut)

    def options(self, **_: Any) -> _Calls:
        return self


class _Ref:
    def __init__(self, fut: Future[Any]) -> None:
        self.fut = fut

    def future(self) -> Future[Any]:
        return self.fut

    def __await__(self) -> Any:
        return asyncio.wrap_future(self.fut).__await__()


class _Actor:
    def __init__(self, **answers: Any) -> None:
        for name, answer in answers.items():
            setattr(self, name, _Calls(answer))


class _Metrics:
    def count(self, *_: Any) -> None:
        pass


BOUND = {"kv_tokens": 0, "events": [], "state": "idle", "kv_restored": False, "tier": "disk"}


def _manager(root: Path, **hosts: Any) -> Any:
    cls = PoolManager.__ray_actor_class__  # type: ignore[attr-defined]
    m = cls.__new__(cls)  # the plain class: no Ray, no __init__ (which creates the monitor)
    m.cfg = PoolConfig(watchdog_s=5)
    m.store = CheckpointStore(root)
    m.registry = Registry()
    m.registry.add(AID, 5)
    m.queues, m.moving, m.exclude, m.crashes, m.results = {}, {}, {}, {}, []
    m.events, m.metrics = EventSink("test"), _Metrics()
    m.monitor = _Actor(release=True, mark_failed=None)
    m._wake = asyncio.Event()
    return m


def _quarantined_fence(root: Path, state: AgentState = AgentState.DORMANT) -> CheckpointStore:
    """v1 at epoch 1 and a fence, v2 at epoch 4, whose file then goes bad and is quarantined."""
    store = CheckpointStore(root)
    record = AgentRecord(spec=AgentSpec(agent_id=AID), state=state)
    store.write(record, epoch=1)
    entry = store.write(record, epoch=4)
    path = store._folder(AID) / entry.file
    path.write_bytes(path.read_bytes()[:-8])
    assert store.read(AID)[1].version == 1  # v2 quarantined; the manifest's fence is still 4
    return store


def test_a_fresh_manager_binds_above_the_fence_of_a_quarantined_version(tmp_path: Path) -> None:
    store = _quarantined_fence(tmp_path)
    host = _Actor(bind=BOUND)
    m = _manager(tmp_path)
    slot = Slot(HostClient(host, "h0", 5), 0)
    slot.busy, slot.agent = True, AID
    asyncio.run(m._activate(slot, AID, time.perf_counter()))
    [(agent_id, _, epoch)] = host.bind.calls  # type: ignore[attr-defined]
    assert agent_id == AID and epoch > 4, "a commit under this epoch would be StaleEpoch"
    assert store.write(store.read(AID)[0], epoch).epoch == epoch


def test_release_writes_above_the_fence_of_a_quarantined_version(tmp_path: Path) -> None:
    store = _quarantined_fence(tmp_path, AgentState.FAILED)
    m = _manager(tmp_path)
    m.registry.set_state(AID, AgentState.FAILED)
    assert asyncio.run(m.release(AID)) is True
    record, entry = store.read(AID)
    assert record.state is AgentState.DORMANT and entry.epoch > 4


def _batch() -> list[tuple[Task, None]]:
    return [(Task(task_id=f"t{i}", agent_id=AID, prompt="p"), None) for i in range(3)]


def _stale_run(m: Any, slot: Slot, fence_meanwhile: bool) -> None:
    async def go() -> None:
        entry = m.registry.get(AID)
        answer: Future[Any] = Future()
        slot.host.handle.run = _Calls(answer)
        collect = asyncio.ensure_future(m._collect(slot, AID, _batch(), 1.0))
        await asyncio.sleep(0)  # dispatched: the Host runs the batch
        if fence_meanwhile:  # the watchdog fenced the agent off this Host, which is a zombie now
            entry.epoch += 1
            entry.host, slot.agent = None, None
        answer.set_exception(STALE)
        await collect

    asyncio.run(go())


def _bound(m: Any, host: _Actor) -> Slot:
    slot = Slot(HostClient(host, "h0", 5), 0)
    slot.agent, slot.busy = AID, True
    entry = m.registry.get(AID)
    entry.host, entry.epoch = "h0", 2
    m.registry.set_state(AID, AgentState.RUNNING)
    return slot


STALE = RayTaskError("run", "traceback", StaleEpoch("agent a1: write with epoch 2 refused, epoch 4 "
                                                    "committed"))


def test_a_stale_epoch_from_the_agents_own_host_requeues_its_tasks(tmp_path: Path) -> None:
    m = _manager(tmp_path)
    host = _Actor(release=None)
    slot = _bound(m, host)
    _stale_run(m, slot, fence_meanwhile=False)
    assert [t.task_id for t, _ in m.queues[AID]] == ["t0", "t1", "t2"], "no task is dropped"
    assert m.results == [] and m.registry.get(AID).state is AgentState.DORMANT
    assert slot.agent is None and not slot.busy and host.release.calls  # type: ignore[attr-defined]
    assert m.registry.next_demands(5) == [AID], "it is activated again, under a new epoch"
    assert [e["event"] for e in m.events.drain()] == ["pool.stale_epoch_requeued"]


def test_a_fenced_zombies_stale_epoch_is_still_discarded(tmp_path: Path) -> None:
    m = _manager(tmp_path)
    slot = _bound(m, _Actor(release=None))
    _stale_run(m, slot, fence_meanwhile=True)
    assert AID not in m.queues and m.results == []
    assert [e["event"] for e in m.events.drain()] == ["pool.zombie_discarded"]
