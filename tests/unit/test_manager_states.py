"""The registry's agent state follows its Host's reports, through the transition table, without
Ray: a batch that ends DEGRADED leaves the agent DEGRADED (in `status` and the gauges) while it is
resident and idle; one that hands its tasks back to migrate shows RECOVERING until it is parked;
parking moves it to DORMANT; FAILED comes from the Host's results once."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from agents.config import PoolConfig
from agents.errors import FaultClass
from agents.events import EventSink
from agents.models import GenerationParams, Task, TaskResult, TaskStatus
from agents.state import AgentState, Event
from pool.control.hosts import HostClient
from pool.control.manager import PoolManager
from pool.control.registry import Registry
from pool.control.slots import Slot
from pool.runtime.host import Carry, Outcome
from pool.store.checkpoint import CheckpointStore

AID = "a1"


class _Calls:
    """A fake actor method: answers with `answer`; a Future stays pending until the test sets it."""

    def __init__(self, answer: Any) -> None:
        self.answer, self.calls = answer, 0

    def remote(self, *_: Any) -> Any:
        self.calls += 1
        fut = self.answer if isinstance(self.answer, Future) else Future()
        if not fut.done() and not isinstance(self.answer, Future):
            fut.set_result(self.answer)
        return type("Ref", (), {"future": lambda _self: fut,
                                "__await__": lambda _self: asyncio.wrap_future(fut).__await__()})()

    def options(self, **_: Any) -> _Calls:
        return self


class _Host:
    def __init__(self, **answers: Any) -> None:
        for name, answer in answers.items():
            setattr(self, name, _Calls(answer))


class _Gpu:  # the VRAM accounting the manager asks while it parks: never over its limit
    num_gpus = 1

    def over_limit(self, *_: Any) -> bool:
        return False

    def footprint(self, *_: Any) -> int:
        return 0


class _Metrics:
    def count(self, *_: Any) -> None:
        pass


def _manager(root: Path) -> Any:
    cls = PoolManager.__ray_actor_class__  # type: ignore[attr-defined]
    m = cls.__new__(cls)  # the plain class: no Ray, no __init__ (which creates the monitor)
    m.cfg, m.store, m.ledger = PoolConfig(watchdog_s=5), CheckpointStore(root), _Gpu()
    m.registry = Registry()
    m.registry.add(AID, 5)
    m.queues, m.moving, m.exclude, m.crashes, m.task_deaths, m.results = {}, {}, {}, {}, {}, []
    m.events, m.metrics, m.monitor = EventSink("test"), _Metrics(), _Host(mark_failed=None)
    m._wake = asyncio.Event()
    return m


def _resident(m: Any, host: _Host) -> Slot:
    slot = Slot(HostClient(host, "h0", m.cfg.watchdog_s), 0)
    slot.agent, m.slots = AID, [slot]
    m.registry.get(AID).host = "h0"
    m.registry.move(AID, Event.ACTIVATE)
    return slot


def _result(i: int, state: AgentState, ok: bool = True) -> TaskResult:
    return TaskResult(task_id=f"t{i}", agent_id=AID, agent_state=state.value,
                      status=TaskStatus.SUCCEEDED if ok else TaskStatus.FAILED)


def _batch(m: Any, slot: Slot, outcomes: list[Outcome]) -> None:
    """One batch dispatched to the agent's Host, which answers with `outcomes`."""
    slot.host.handle.run = _Calls((outcomes, [], 0))
    m.registry.move(AID, Event.START)
    slot.busy = True
    asyncio.run(m._collect(slot, AID, [(o.task, None) for o in outcomes], 1.0))


def _task(i: int) -> Task:
    return Task(task_id=f"t{i}", agent_id=AID, prompt="p")


def test_a_degraded_agent_stays_degraded_while_resident_and_idle(tmp_path: Path) -> None:
    m = _manager(tmp_path)
    slot = _resident(m, _Host())
    _batch(m, slot, [Outcome(_task(0), _result(0, AgentState.IDLE), agent_state=AgentState.DEGRADED),
                     Outcome(_task(1), _result(1, AgentState.DEGRADED), agent_state=AgentState.DEGRADED)])
    assert m.registry.get(AID).state is AgentState.DEGRADED and not slot.busy
    assert m.registry.counts()["degraded"] == 1, "what `selfheal status` and the gauge count"
    _batch(m, slot, [Outcome(_task(2), _result(2, AgentState.IDLE), agent_state=AgentState.IDLE)])
    assert m.registry.get(AID).state is AgentState.IDLE


def test_an_agent_handing_tasks_back_shows_recovering_until_parked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pool.control.manager.ray.put", lambda blob: blob)  # the hot tier, without Ray
    m = _manager(tmp_path)
    parked: Future[Any] = Future()
    slot = _resident(m, _Host(park=parked))
    carry = Carry(params=GenerationParams(), attempt=2, tiers=(2, 2), host_changed=True)
    moved = Outcome(_task(0), None, carry, FaultClass.OOM, agent_state=AgentState.RECOVERING)

    async def go() -> None:
        slot.host.handle.run = _Calls(([moved], [], 0))
        m.registry.move(AID, Event.START)
        slot.busy = True
        collect = asyncio.ensure_future(m._collect(slot, AID, [(moved.task, None)], 1.0))
        while not (slot.host.handle.park.calls or collect.done()):  # folded: parking
            await asyncio.sleep(0.01)
        assert m.registry.get(AID).state is AgentState.RECOVERING
        assert m.registry.counts()["recovering"] == 1
        parked.set_result(b"checkpoint")
        await collect

    asyncio.run(go())
    assert m.registry.get(AID).state is AgentState.DORMANT and m.queues[AID]


def test_a_failed_batch_fails_the_agent_once_through_the_table(tmp_path: Path) -> None:
    m = _manager(tmp_path)
    slot = _resident(m, _Host(release=None))
    _batch(m, slot, [Outcome(_task(0), _result(0, AgentState.FAILED, ok=False),
                             agent_state=AgentState.FAILED)])
    assert m.registry.get(AID).state is AgentState.FAILED and slot.agent is None
    assert m.monitor.mark_failed.calls == 1
