"""The PoolManager's GPU side (`pool.control.vram.GpuControl`) without Ray: fake Host handles whose
calls answer, fail or never answer."""

from __future__ import annotations

import asyncio
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

import pool.control.vram
from agents.config import PoolConfig
from agents.models import Task
from agents.state import Event
from pool.control.actions import Park, Parked
from pool.control.budget import VramLedger
from pool.control.facts import HostSlot
from pool.control.hosts import HostClient
from pool.control.scheduler import Scheduler
from pool.control.vram import GpuControl
from pool.store.checkpoint import CheckpointStore


class _Call:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def remote(self, *args: Any) -> Any:
        fut: Future[Any] = Future()
        if isinstance(self.answer, BaseException):
            fut.set_exception(self.answer)
        elif self.answer is not _SILENT:
            fut.set_result(self.answer)
        return type("Ref", (), {"future": lambda _self: fut})()


_SILENT = object()  # a Host that never answers (frozen, or waiting for its engine to load)


class _Host:
    measure: _Call  # a test changes the reading between passes

    def __init__(self, **answers: Any) -> None:
        for method, answer in answers.items():
            setattr(self, method, _Call(answer))


class _Pool(GpuControl):
    """GPU control over a real scheduler whose loop is played by `wake`: parks are answered
    at once (their agents recorded in `parked`)."""

    def __init__(self, hosts: list[_Host], agents: list[str | None]) -> None:
        cfg = PoolConfig(reconcile_s=0.01, watchdog_s=0.2)
        sched = Scheduler(cfg, 3, VramLedger(8192, 0.85, 600, 1, len(hosts), agent_mib=320))
        sched.add_hosts(HostSlot(f"h{i}", 0) for i in range(len(hosts)))
        for h, agent in zip(sched.hosts, agents, strict=True):
            if agent is not None:
                sched.registry.add(agent, 5)
                sched.registry.move(agent, Event.ACTIVATE)
                h.agent = sched.registry.get(agent).host = agent
        clients = {f"h{i}": HostClient(h, f"h{i}", cfg.watchdog_s) for i, h in enumerate(hosts)}
        store = CheckpointStore(Path(tempfile.mkdtemp(prefix="vram-control-")))
        super().__init__(sched, clients, store, cfg, self._loop)
        self.woken, self.events = 0, sched.events
        self.parked: list[str] = []

    @property
    def paused(self) -> dict[int, str]:
        return self.sched.paused

    @property
    def ledger(self) -> VramLedger:
        return self.sched.ledger

    def _loop(self) -> None:
        self.woken += 1
        for action in self.sched.schedule(0.0):
            assert isinstance(action, Park)
            self.parked.append(action.agent)
            self.sched.update(Parked(action.host, action.agent, b"", action.why), 0.0)


@pytest.fixture(autouse=True)
def _short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool.control.vram, "MEASURE_TIMEOUT_S", 0.05)


def _events(p: _Pool, name: str) -> list[dict[str, Any]]:
    return [e for e in p.events.drain() if e["event"] == name]


def test_a_reading_sets_the_gpus_extra_and_counts_a_shared_engine_once() -> None:
    reading = {"available": True, "id": "engine", "scope": "gpu", "used_mib": 2000.0}
    p = _Pool([_Host(measure=reading), _Host(measure=reading)], ["a", None])
    assert asyncio.run(p.reconcile()) is True
    assert p.ledger.extra(0) == 2000 - (600 + 320)
    (e,) = _events(p, "pool.vram_reconciled")
    assert (e["ledger_mib"], e["measured_mib"], e["diff_mib"]) == (920, 2000, 1080)


def test_a_reading_that_frees_a_pressed_gpu_wakes_the_scheduler() -> None:
    # Every resident was shed: nothing else would wake the pass that places the waiting work.
    host = _Host(measure={"available": True, "id": "g", "scope": "gpu", "used_mib": 7200.0})
    p = _Pool([host], [None])
    asyncio.run(p.reconcile())
    assert p.woken == 1  # over the limit: the next pass sheds
    asyncio.run(p.reconcile())
    assert p.woken == 2  # still over the limit
    host.measure = _Call({"available": True, "id": "g", "scope": "gpu", "used_mib": 0.0})
    asyncio.run(p.reconcile())
    assert p.ledger.extra(0) == 0 and p.woken == 3  # freed: the next pass places work
    asyncio.run(p.reconcile())
    assert p.woken == 3  # nothing changed within the limit: no pass for nothing


def test_a_reserving_engine_is_measured_against_its_reservation() -> None:
    reading = {"available": True, "id": "e", "scope": "gpu", "used_mib": 7100.0, "reserved_mib": 7000}
    p = _Pool([_Host(measure=reading)], ["a"])
    asyncio.run(p.reconcile())
    assert p.ledger.extra(0) == 100


def test_no_device_stops_reconciliation_with_one_event_but_a_slow_host_does_not() -> None:
    slow = _Pool([_Host(measure=_SILENT), _Host(measure=TimeoutError())], [None, None])
    assert asyncio.run(slow.reconcile()) is True  # an engine still loading: try again later
    assert not _events(slow, "pool.vram_unmeasured")
    none = _Pool([_Host(measure={"available": False, "reason": "no GPU: VRAM is not measured"})],
                 [None])
    assert asyncio.run(none.reconcile()) is False
    assert [e["reason"] for e in _events(none, "pool.vram_unmeasured")] == [
        "no GPU: VRAM is not measured"]


def test_per_process_readings_need_every_host() -> None:
    mine = {"available": True, "id": "pid-1", "scope": "process", "used_mib": 5000.0}
    p = _Pool([_Host(measure=mine), _Host(measure=_SILENT)], ["a", "b"])
    asyncio.run(p.reconcile())
    assert p.ledger.extra(0) == 0 and not _events(p, "pool.vram_reconciled")


def test_pause_sleeps_engines_that_can_and_parks_where_one_cannot_or_is_silent() -> None:
    can = _Pool([_Host(pause_engine=True, wake_engine=True) for _ in range(2)], ["a", "b"])
    got = asyncio.run(can.pause())
    assert got["gpus"] == [{"gpu": 0, "mode": "slept", "parked": 0}] and not can.parked
    assert asyncio.run(can.resume()) == {"woken": [0]} and can.paused == {}

    frozen = _Pool([_Host(pause_engine=True, wake_engine=True), _Host(pause_engine=_SILENT)],
                   ["a", "b"])
    got = asyncio.run(frozen.pause())
    assert got["gpus"][0]["mode"] == "parked" and frozen.parked == ["a", "b"]
    assert frozen.paused == {0: "parked"}


def test_a_pause_outlives_a_manager_restart_until_resume() -> None:
    first = _Pool([_Host(pause_engine=True, wake_engine=True)], ["a"])
    asyncio.run(first.pause())
    # A new manager over the same store: its Hosts are new and hold no agent; the shared engine
    # may still sleep, so resume asks every engine of a paused GPU.
    again = _Pool([_Host(wake_engine=True)], [None])
    again.store = first.store
    again.restore_pause()
    assert again.paused == {0: "parked"} and _events(again, "pool.pause_restored")
    assert asyncio.run(again.resume()) == {"woken": [0]}
    fresh = _Pool([_Host(wake_engine=False)], [None])
    fresh.store = first.store
    fresh.restore_pause()
    assert fresh.paused == {}  # resumed: nothing left on disk


def test_a_pause_is_kept_in_an_object_store_too() -> None:
    # The store of a run may be s3:// or gs://: the pause must be read back through the store,
    # not as a local file (on an object store `store.root` is no folder of this machine).
    fs = pafs.FileSystem.from_uri("mock:///")[0]
    first = _Pool([_Host(pause_engine=True, wake_engine=True)], ["a"])
    first.store = CheckpointStore("bucket/run", filesystem=fs)
    asyncio.run(first.pause())
    again = _Pool([_Host(wake_engine=True)], [None])
    again.store = CheckpointStore("bucket/run", filesystem=fs)  # a restarted manager's own
    again.restore_pause()
    assert again.paused == {0: "parked"}, "the pause was not read back from the object store"
    asyncio.run(again.resume())
    assert again.store.get_meta(pool.control.vram.PAUSE_FILE) is None, "resume leaves no pause"


def test_the_engine_base_enters_the_ledger_unless_no_agent_would_fit() -> None:
    p = _Pool([_Host(engine_info={"base_mib": 257}), _Host(engine_info={"base_mib": 257})], [None, None])
    asyncio.run(p.learn_base())
    assert p.ledger.base_mib == 257
    assert [(e["configured_mib"], e["reported_mib"]) for e in _events(p, "pool.engine_base")] == [(600, 257)]
    huge = _Pool([_Host(engine_info={"base_mib": 6900})], [None])
    asyncio.run(huge.learn_base())
    assert huge.ledger.base_mib == 600 and _events(huge, "pool.engine_base_too_large")
    silent = _Pool([_Host(engine_info={})], [None])  # llama.cpp, scripted: the configured base
    asyncio.run(silent.learn_base())
    assert silent.ledger.base_mib == 600 and not silent.events.drain()


def test_a_paused_pool_hands_out_the_pauses_parks_and_nothing_else() -> None:
    p = _Pool([_Host(pause_engine=False, wake_engine=True)], ["a"])
    p.sched.book.submit([(Task(task_id="t", agent_id="a", prompt="p"), None)])
    asyncio.run(p.pause())
    assert p.parked == ["a"] and p.sched.schedule(0.0) == [], "no batch while paused"
