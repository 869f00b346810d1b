"""The PoolManager's epochs without Ray: a fresh manager after a quarantined newest version binds
and releases above the store's fence (the stale-epoch folds are the scheduler's:
tests/unit/test_scheduler.py)."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from agents.config import PoolConfig
from agents.models import AgentRecord, AgentSpec, Task
from agents.state import AgentState
from pool.control.budget import VramLedger
from pool.control.facts import HostSlot
from pool.control.hosts import HostClient
from pool.control.manager import PoolManager
from pool.control.scheduler import Scheduler
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


BOUND = {"kv_tokens": 0, "events": [], "state": "idle", "kv_restored": False, "tier": "disk"}


class _Views:
    def note_residency(self) -> None:
        pass


def _manager(root: Path, **hosts: Any) -> Any:
    cls = PoolManager.__ray_actor_class__  # type: ignore[attr-defined]
    m = cls.__new__(cls)  # the plain class: no Ray, no __init__ (which creates the monitor)
    m.cfg = PoolConfig(watchdog_s=5)
    m.store = CheckpointStore(root)
    m.sched = Scheduler(m.cfg, 3, VramLedger(8192, 0.85, 600, 1, 1, agent_mib=320))
    m.sched.add_hosts([HostSlot("h0", 0)])
    m.sched.registry.add(AID, 5)
    m.events, m.views = m.sched.events, _Views()
    m.clients = {"h0": HostClient(_Actor(**hosts), "h0", 5)}
    m.monitor = _Actor(release=True, mark_failed=None)
    m._wake, m._results = asyncio.Event(), asyncio.Event()
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
    m = _manager(tmp_path, bind=BOUND)
    m.sched.book.submit([(Task(task_id="t", agent_id=AID, prompt="p"), None)])
    [bind] = m.sched.schedule(0.0)
    asyncio.run(m._bind(bind))
    [(agent_id, _, epoch)] = m.clients["h0"].handle.bind.calls
    assert agent_id == AID and epoch > 4, "a commit under this epoch would be StaleEpoch"
    assert store.write(store.read(AID)[0], epoch).epoch == epoch
    assert m.sched.registry.get(AID).epoch == epoch and m.sched.registry.get(AID).host == "h0"


def test_release_writes_above_the_fence_of_a_quarantined_version(tmp_path: Path) -> None:
    store = _quarantined_fence(tmp_path, AgentState.FAILED)
    m = _manager(tmp_path)
    m.sched.registry.set_state(AID, AgentState.FAILED)
    assert asyncio.run(m.release(AID)) is True
    record, entry = store.read(AID)
    assert record.state is AgentState.DORMANT and entry.epoch > 4
    assert m.sched.registry.get(AID).state is AgentState.DORMANT


def test_an_action_that_breaks_never_leaves_its_host_busy(tmp_path: Path) -> None:
    m = _manager(tmp_path, bind=BOUND)
    m.sched.book.submit([(Task(task_id="t", agent_id=AID, prompt="p"), None)])
    [bind] = m.sched.schedule(0.0)
    asyncio.run(m._bind(bind))
    [run] = m.sched.schedule(0.0)

    class Broken(HostClient):
        async def run(self, *_: Any) -> Any:
            raise RuntimeError("a bug on the manager's side")

    m.clients["h0"] = Broken(None, "h0", 5)
    asyncio.run(m._apply(run))
    assert not m.sched.host("h0").busy, "the scheduler would wait for it forever"
    [result] = m.sched.book.results
    assert result.error.startswith("agent failed: host error: RuntimeError") and "a bug" in result.error
