"""The PoolManager's side of the GPU: the engine base in the ledger, reconciliation of the ledger with
pynvml, and pausing (engine sleep, else parking every resident).

`GpuControl`, a collaborator of `pool.control.manager.PoolManager`: it asks the Hosts (through
their `HostClient`s) and hands what it learns to the scheduler, which owns the ledger
(`EngineBase`, `Reading`) and the paused GPUs. The ledger starts from the
configured (or, for llama.cpp, planned from the model's metadata) engine base and takes the
engine's own figure (`base_mib` of its `info()`: the vLLM weights, llama.cpp's model and compute
buffers as it logs them) once the engine reports it. Every `reconcile_s` seconds each GPU's Hosts
read the device (`measure()`: the shared engine's reading, else pynvml of the Host process); what
the pool was measured to hold beyond what the ledger accounts for (beyond the reservation, for an
engine that reserves up front) becomes the GPU's `extra_mib`, so the planner sheds residents of a
GPU over its limit and the Hosts there see no headroom (tier 2: compress, then migrate off the
GPU). A reading stands until the next one: memory freed by shedding counts once a reading shows it.
Without a GPU the first round logs `pool.vram_unmeasured` with the reason and reconciliation stops;
that is not an error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agents.config import PoolConfig
from agents.engines.gpumem import total_used
from agents.errors import UsageError
from pool.control.actions import EngineBase, Reading, Update
from pool.control.hosts import Done, HostClient, Reply
from pool.control.scheduler import Scheduler
from pool.store.checkpoint import CheckpointStore

MEASURE_TIMEOUT_S = 10.0
PAUSE_FILE = "paused.json"  # in the checkpoint store: a pause outlives a manager restart


class GpuControl:
    def __init__(self, sched: Scheduler, clients: dict[str, HostClient], store: CheckpointStore,
                 cfg: PoolConfig, wake: Callable[[], None]) -> None:
        self.sched, self.clients, self.store, self.cfg, self.wake = sched, clients, store, cfg, wake

    def _live(self, gpu: int) -> list[HostClient]:
        return [self.clients[h.host_id] for h in self.sched.live(gpu)]

    def _tell(self, event: Update) -> None:
        self.sched.update(event, time.monotonic())
        self.wake()

    # -- the engine base -----------------------------------------------------------------
    async def learn_base(self) -> None:
        """Enter the engine's own base footprint (when it reports one) into the ledger."""
        firsts = [live[0] for g in range(self.sched.ledger.num_gpus) if (live := self._live(g))]
        infos = await _ask_all(firsts, HostClient.engine_info)  # a vLLM engine may load for minutes
        said = [i for i in infos if isinstance(i, dict) and "base_mib" in i]
        if not said:
            return  # the engine says nothing: the configured base stands
        base = max(int(i["base_mib"]) for i in said)
        # the check against a reading: the engine process's RSS (CPU) holds at least its base
        rss = max((float(i["rss_mib"]) for i in said if i.get("rss_mib")), default=None)
        self._tell(EngineBase(base, rss))

    # -- reconciliation with the device -----------------------------------------------
    async def reconcile_loop(self) -> None:
        if self.cfg.reconcile_s <= 0:
            return
        while True:
            try:
                if not await self.reconcile():
                    return
            except Exception as exc:  # keep reconciling; the event says what broke
                self.sched.events.emit("pool.reconcile_error", error=repr(exc)[:300])
            await asyncio.sleep(self.cfg.reconcile_s)

    async def reconcile(self) -> bool:
        """One round over the GPUs; False when there is nothing to measure (no GPU)."""
        unmeasured: list[str] = []
        for gpu in range(self.sched.ledger.num_gpus):
            if gpu in self.sched.paused:
                continue
            reason = await self._reconcile_gpu(gpu)
            if reason:
                unmeasured.append(reason)
        if unmeasured and len(unmeasured) == self.sched.ledger.num_gpus:
            self.sched.events.emit("pool.vram_unmeasured", reason=unmeasured[0],
                                   note="the ledger is not reconciled with a device reading")
            return False
        return True

    async def _reconcile_gpu(self, gpu: int) -> str:
        """Reconcile one GPU; returns why it cannot be measured at all ("" when it has a
        reading, or none this round only)."""
        hosts = self._live(gpu)
        if not hosts:
            return ""
        got = await _ask_all(hosts, HostClient.measure, MEASURE_TIMEOUT_S)
        if not all(isinstance(r, dict) for r in got):  # a Host (or its engine) busy starting
            return ""  # or restarting: this round has no complete reading, the next may
        readings: list[dict[str, Any]] = list(got)
        if not any(r.get("available") for r in readings):
            return str(readings[0].get("reason", "no reading"))
        whole = [r for r in readings if r.get("available") and r.get("scope") == "gpu"]
        used = total_used(whole or readings)  # per-process readings: every Host must answer
        if used is None:
            return ""
        # An engine that reserves its memory up front (vLLM) is measured against its
        # reservation, which the ledger divides among the residents; others against the ledger.
        reserved = next((float(r["reserved_mib"]) for r in whole if r.get("reserved_mib")), None)
        was_over = gpu in self.sched.over_limit()
        self.sched.update(Reading(gpu, used, reserved, str(readings[0].get("source", ""))),
                          time.monotonic())
        if was_over or gpu in self.sched.over_limit():
            self.wake()  # the next pass sheds residents of this GPU, or places work there
        return ""

    # -- giving the GPU back -------------------------------------------------------------
    async def pause(self, timeout_s: float = 300.0) -> dict[str, Any]:
        """Give every GPU back: its engine sleeps where it can (vLLM on CUDA), else every
        resident is parked (checkpoint committed, bytes in the hot tier). Queued and new tasks
        wait until `resume()`. Waits for in-flight calls to end first."""
        started = time.perf_counter()
        sched = self.sched
        for gpu in range(sched.ledger.num_gpus):
            sched.paused.setdefault(gpu, "pausing")
        self._keep_pause(True)
        deadline = time.monotonic() + timeout_s
        while any(h.busy and not h.reviving for h in sched.hosts):  # not the zombies
            if time.monotonic() > deadline:
                busy = sum(h.busy for h in sched.hosts)
                sched.paused.clear()
                self._keep_pause(False)
                self.wake()
                raise UsageError(f"pause: {busy} Hosts still busy after {timeout_s:.0f} s; try again")
            await asyncio.sleep(0.05)
        out = await asyncio.gather(*(self._pause_gpu(g) for g in range(sched.ledger.num_gpus)))
        return {"gpus": list(out), "elapsed_s": round(time.perf_counter() - started, 3)}

    async def _pause_gpu(self, gpu: int) -> dict[str, Any]:
        sched = self.sched
        if sched.paused.get(gpu) in ("slept", "parked"):
            return {"gpu": gpu, "mode": sched.paused[gpu], "parked": 0}
        hosts = self._live(gpu)
        slept = await _ask_all(hosts, HostClient.pause_engine)
        parked = 0
        if hosts and all(x is True for x in slept):
            mode = "slept"
        else:  # the engine cannot sleep (or a Host did not answer): park the GPU's residents
            mode = "parked"
            await _ask_all([c for c, x in zip(hosts, slept, strict=True) if x is True],
                           HostClient.wake_engine)
            parked = sched.evict(gpu, "pause: the engine cannot sleep")
            self.wake()
            while any(h.call == "park" for h in sched.hosts if h.gpu == gpu):
                await asyncio.sleep(0.05)
        sched.paused[gpu] = mode
        sched.events.emit("pool.paused", gpu=gpu, mode=mode, parked=parked)
        return {"gpu": gpu, "mode": mode, "parked": parked}

    async def resume(self) -> dict[str, Any]:
        """Take the GPUs again: wake sleeping engines; parked agents come back as work needs.
        Every engine of a paused GPU is asked (waking is idempotent): after a manager restart,
        a shared engine may still sleep under a pause the new Hosts never saw."""
        woken = []
        for gpu in sorted(self.sched.paused):
            if any(x is True for x in await _ask_all(self._live(gpu), HostClient.wake_engine)):
                woken.append(gpu)
        self.sched.paused.clear()
        self._keep_pause(False)
        self.sched.events.emit("pool.resumed", woken=woken)
        self.wake()
        return {"woken": woken}

    def _keep_pause(self, on: bool) -> None:
        """Record (or clear) the pause in the checkpoint store, so that a restarted manager
        keeps it."""
        if on:
            self.store.put_meta(PAUSE_FILE, json.dumps({"paused_at": time.time()}).encode())
        else:
            self.store.delete_meta(PAUSE_FILE)

    def restore_pause(self) -> None:
        """At start: a pause recorded by an earlier manager stands. The new Hosts hold no agent,
        so every GPU counts as parked until `resume`."""
        if self.store.get_meta(PAUSE_FILE) is not None:  # through the store: it may be s3://
            self.sched.paused = dict.fromkeys(range(self.sched.ledger.num_gpus), "parked")
            self.sched.events.emit("pool.pause_restored", gpus=sorted(self.sched.paused))


async def _ask_all(
    hosts: list[HostClient], probe: Callable[[HostClient, float | None], Awaitable[Reply[Any]]],
    timeout_s: float | None = None,
) -> list[Any]:
    """`probe` on every Host at once: each Host's answer, or None where it failed or was silent
    past `timeout_s` (default the watchdog): a frozen Host must not hold up a pause or a reading."""
    replies = await asyncio.gather(*(probe(c, timeout_s) for c in hosts))
    return [r.value if isinstance(r, Done) else None for r in replies]
