"""A Host's residency half: bind an agent, park it, commit its checkpoint, ask the engine.

`HostRuntime` (`pool/runtime/host.py`) adds the EXECUTE -> MONITOR -> RECOVER loop on top. The agent's
KV state lives in the engine (its slot) while it is resident and goes into its checkpoint when
it is parked, unless it is over `engine.kv_max_bytes`; the hot tier gets only a reference to it
when the engine keeps a copy (`kv_reference`), and a bind whose reference the engine no longer
knows restores the checkpoint's KV instead. The Host's record holds no KV while the agent is
resident: its slot does. Each move of the agent's state during a run
is told to `on_state` as it happens (the manager follows it mid-batch); bind and park are not:
the manager makes those moves itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agents import codec
from agents.config import Settings
from agents.engines.base import Engine
from agents.engines.gpumem import nvml_reading
from agents.errors import StorageError, UsageError
from agents.events import EventSink
from agents.models import AgentRecord
from agents.state import RESIDENT, AgentState, Event, next_state
from pool.store.checkpoint import CheckpointStore

QUIET = frozenset({(AgentState.IDLE, AgentState.RUNNING), (AgentState.RUNNING, AgentState.IDLE)})


class Residency:
    host_id: str
    settings: Settings
    engine: Engine
    store: CheckpointStore
    events: EventSink
    agent: AgentRecord | None
    epoch: int
    _dirty: bool  # the agent changed since its last committed checkpoint
    on_state: Callable[[str, AgentState], None] | None  # (agent id, new state) after each move

    # -- residency -------------------------------------------------------------------------
    def bind(self, agent_id: str, blob: bytes | None, epoch: int) -> dict[str, Any]:
        """Make `agent_id` resident: from hot-tier bytes when given, else from disk."""
        started = time.perf_counter()
        if self.agent is not None:
            raise UsageError(f"{self.host_id} already hosts {self.agent.spec.agent_id}")
        record = codec.decode(blob) if blob is not None else self.store.read(agent_id)[0]
        tier = "hot" if blob is not None else "disk"
        if record.state is AgentState.FAILED:  # a person must release it first
            return {"elapsed_s": time.perf_counter() - started, "kv_restored": False,
                    "state": record.state.value, "tier": tier}
        if record.state in RESIDENT:  # committed while resident on a Host that is gone
            record = record.model_copy(update={"state": next_state(record.state, Event.HOST_LOST)})
        kv = record.kv_state if self.settings.engine.kv_snapshot else None
        kv_restored = self.engine.load_state(agent_id, kv)  # kv None: the slot starts empty
        kv_fallback = kv_restored is None  # a reference to a copy the engine no longer keeps
        if kv_fallback:
            kv_restored = self.engine.load_state(agent_id, self._checkpoint_kv(agent_id))
        self.agent = record.model_copy(update={"state": next_state(record.state, Event.ACTIVATE),
                                               "kv_state": None})
        self.epoch = epoch
        elapsed = time.perf_counter() - started
        self.events.emit("agent.activated", agent_id=agent_id, host=self.host_id, epoch=epoch,
                         tier=tier, kv_restored=bool(kv_restored), kv_fallback=kv_fallback,
                         elapsed_s=round(elapsed, 6))
        return {"elapsed_s": elapsed, "kv_restored": bool(kv_restored), "kv_fallback": kv_fallback,
                "state": self.agent.state.value, "tier": tier, "kv_tokens": self.kv_tokens()}

    def _checkpoint_kv(self, agent_id: str) -> bytes | None:
        """The KV in the agent's checkpoint; None when it has none or cannot be read (the KV is
        a cache: the agent then re-reads its persona and memory)."""
        try:
            return self.store.read(agent_id)[0].kv_state
        except StorageError:
            return None

    def park(self) -> bytes:
        """Commit the agent's checkpoint and unbind it; returns the bytes for the hot tier."""
        agent = self._require()
        kv = self._slot_kv() if self._keeps_kv() else None
        parked = agent.model_copy(update={"state": next_state(agent.state, Event.PARK),
                                          "kv_state": kv})
        # After a run the agent is already committed (in a resident state, which a later bind
        # reads as a lost Host): only the hot-tier copy needs the DORMANT state, unless the
        # engine's KV of the agent goes into the checkpoint now. An agent bound from its registry
        # row (`pool.store.agent_table`) has no checkpoint yet: its first park writes it.
        committed = None
        if self._dirty or kv is not None or not self.store.exists(agent.spec.agent_id):
            committed = self._commit(parked)
        self.agent = None
        reference = getattr(self.engine, "kv_reference", None)
        hot_kv = (reference(kv) or kv) if reference and kv else kv
        if committed is None or hot_kv is not kv:  # else the hot tier gets what was committed
            committed = codec.encode(parked.model_copy(update={"kv_state": hot_kv}))
        return committed

    def release(self) -> None:
        """Forget the agent without writing (its state is already committed)."""
        self.agent = None

    # -- the engine's device (optional engine methods, see agents.engines.base) ------------
    def engine_info(self) -> dict[str, Any]:
        info = getattr(self.engine, "info", None)
        return dict(info()) if info else {}

    def pause_engine(self) -> bool:
        """Give the GPU back keeping the engine; False when the engine cannot sleep."""
        sleep = getattr(self.engine, "sleep", None)
        return bool(sleep()) if sleep else False

    def wake_engine(self) -> bool:
        wake = getattr(self.engine, "wake_up", None)
        return bool(wake()) if wake else False

    def measure(self) -> dict[str, Any]:
        """The engine's reading of its GPU, else pynvml's reading of this process."""
        measure = getattr(self.engine, "measure", None)
        return dict(measure()) if measure else nvml_reading()

    def kv_tokens(self) -> int:
        """Tokens of KV the engine holds for the resident agent (0 for engines that do not say)."""
        return int(getattr(self.engine, "kv_tokens", 0))

    def _commit(self, record: AgentRecord) -> bytes:
        data = codec.encode(record)
        self.store.write_bytes(record.spec.agent_id, data, self.epoch)
        self._dirty = False
        return data

    def _require(self) -> AgentRecord:
        if self.agent is None:
            raise UsageError(f"{self.host_id} hosts no agent")
        return self.agent

    def _move(self, event: Event) -> None:
        agent = self._require()
        new = next_state(agent.state, event)
        if (agent.state, new) not in QUIET:
            self.events.emit("agent.state_changed", agent_id=agent.spec.agent_id,
                             old=agent.state.value, new=new.value, host=self.host_id)
        self.agent = agent.model_copy(update={"state": new})
        if self.on_state is not None:
            self.on_state(agent.spec.agent_id, new)

    def _keeps_kv(self) -> bool:
        return self.settings.engine.kv_snapshot and self._require().state is not AgentState.FAILED

    def _slot_kv(self) -> bytes | None:
        """The engine's KV of the agent for its checkpoint; None when over `kv_max_bytes`."""
        agent, cfg = self._require(), self.settings.engine
        blob = self.engine.save_state(agent.spec.agent_id)
        if blob is not None and len(blob) > cfg.kv_max_bytes:
            self.events.emit("agent.kv_dropped", agent_id=agent.spec.agent_id, bytes=len(blob),
                             kv_max_bytes=cfg.kv_max_bytes, tokens=self.kv_tokens())
            return None  # the next activation re-reads persona and memory
        return blob
