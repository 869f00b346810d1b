"""What the scheduler asks the manager to do (actions) and what the manager tells it happened
(outcomes). Plain frozen records: the vocabulary between `pool.control.scheduler.Scheduler`
(pure) and `pool.control.manager.PoolManager` (the Ray edge that carries them out).

Every action names a Host by id and, where it has one, an agent; every outcome is one reply of a
Host (`pool.control.hosts`), a store operation or a probe, folded by `Scheduler.update`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.models import Task
from agents.state import AgentState
from pool.runtime.host import Carry, Outcome

Item = tuple[Task, Carry | None]  # a queued task and the recovery state it travels with


# -- actions: schedule(now) -> [Action] -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class Bind:
    """Bind `agent` on `host` above epoch `after` (the store's fence): from `hot` (a reference to
    the bytes of its last park), else from its committed checkpoint or, never committed, its row."""

    host: str
    agent: str
    hot: Any
    after: int


@dataclass(frozen=True, slots=True)
class Park:
    """Commit `agent`'s checkpoint on `host` and unbind it."""

    host: str
    agent: str
    why: str


@dataclass(frozen=True, slots=True)
class Run:
    """Run `batch` for `agent` on `host`; `dispatch` tags the Host's state reports."""

    host: str
    agent: str
    batch: tuple[Item, ...]
    headroom: float
    dispatch: int
    epoch: int  # the epoch the agent was bound with


@dataclass(frozen=True, slots=True)
class Fence:
    """Commit `agent`'s latest checkpoint again under an epoch above `after` (a stalled Host's
    late commits are refused)."""

    agent: str
    after: int


@dataclass(frozen=True, slots=True)
class Release:
    """Tell `host` to drop whatever agent it holds (fire-and-forget)."""

    host: str


@dataclass(frozen=True, slots=True)
class Revive:
    """Wait until lost `host` answers again (Ray restarts it), then report `Revived`."""

    host: str


@dataclass(frozen=True, slots=True)
class CheckNode:
    """Is `host`'s node still alive? Report `NodeLost` when it is not."""

    host: str
    node: str


@dataclass(frozen=True, slots=True)
class FailAgent:
    """Record `agent` FAILED in the monitor's table (once) after verifying its checkpoint."""

    agent: str
    reason: str
    verify: bool  # a crash streak: the checkpoint is verified (bad versions quarantined)


Action = Bind | Park | Run | Fence | Release | Revive | CheckNode | FailAgent


# -- what happened: update(event, now) ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Bound:
    host: str
    agent: str
    epoch: int
    info: dict[str, Any]  # the Host's bind answer: state, kv_tokens, tier, kv_restored, events
    latency_s: float
    hot: bool  # offered the hot tier's bytes (else its checkpoint, or its row: "disk")


@dataclass(frozen=True, slots=True)
class Parked:
    host: str
    agent: str
    hot: Any  # a reference to the parked bytes (the hot tier)
    why: str = ""


@dataclass(frozen=True, slots=True)
class Ran:
    host: str
    agent: str
    dispatch: int
    outcomes: tuple[Outcome, ...]
    events: tuple[dict[str, Any], ...]
    kv_tokens: int


@dataclass(frozen=True, slots=True)
class CallFailed:
    """The Host raised in `stage` (bind, park, run); `stale`: refused by a fence above `epoch`."""

    host: str
    agent: str
    stage: str
    error: str
    batch: tuple[Item, ...] = ()
    stale: bool = False
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class HostLost:
    """The Host process died during a call (its `batch`, if it was running one)."""

    host: str
    batch: tuple[Item, ...] = ()


@dataclass(frozen=True, slots=True)
class HostStalled:
    """No answer within the watchdog in `stage`; the call goes on and is discarded (`Reclaimed`)."""

    host: str
    agent: str
    stage: str
    epoch: int
    batch: tuple[Item, ...] = ()


@dataclass(frozen=True, slots=True)
class Fenced:
    agent: str
    epoch: int  # 0: the fence could not be written (`error`)
    error: str = ""


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """A stalled Host answered at last (its answer discarded) and was released."""

    host: str
    agent: str
    error: str


@dataclass(frozen=True, slots=True)
class Revived:
    host: str


@dataclass(frozen=True, slots=True)
class NodeLost:
    node: str


@dataclass(frozen=True, slots=True)
class StateReported:
    """A Host's mid-batch report of its agent's new state, for batch `dispatch`."""

    agent: str
    dispatch: int
    state: AgentState


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """A Host's mid-batch report that it starts a step of `task` in batch `dispatch` (only for
    batches of more than one task: a Host that dies is then charged to that task alone)."""

    agent: str
    dispatch: int
    task: str


@dataclass(frozen=True, slots=True)
class Reading:
    """A device reading of `gpu`: what the pool holds there (`reserved_mib`: an engine that
    reserves up front, measured against its reservation)."""

    gpu: int
    used_mib: float
    reserved_mib: float | None
    source: str = ""


@dataclass(frozen=True, slots=True)
class EngineBase:
    """The engine's own figure of what it holds on a GPU before any agent."""

    base_mib: int
    rss_mib: float | None = None


Update = (Bound | Parked | Ran | CallFailed | HostLost | HostStalled | Fenced | Reclaimed
            | Revived | NodeLost | StateReported | TaskStarted | Reading | EngineBase)
