"""The one place that calls Ray on a Host (the idea of Ray Serve's `ActorReplicaWrapper`).

`HostClient` wraps one Host actor's handle. Every call is submitted at once (so calls run on the
Host in the order they were made) and answers with a `Reply`, never with a Ray error:

- `Done`: the Host's answer;
- `Gone`: the Host process died, or cannot restart because its node is gone;
- `Failed`: the Host (or Ray) raised; `stale` when the Host was refused by a fence above the
  epoch it was given (StaleEpoch);
- `Stalled`: no answer within the call's timeout. The call still runs on the Host;
  `Stalled.answer` resolves with its late `Reply`, whatever it is, and never raises.

The lifecycle calls (`bind`, `park`, `run`) time out at the pool's watchdog; the probes (`info`,
`measure`, `engine_info`, `pause_engine`, `wake_engine`) at their caller's timeout, else the
watchdog. `release` is fire-and-forget unless awaited. `revive` waits until a lost Host
answers again (Ray restarts it). What a reply means for the pool is the manager's to decide.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ray.exceptions import ActorUnschedulableError, RayActorError, RayError

from agents.errors import StaleEpoch

T = TypeVar("T")

# a Host that died, or cannot restart because its node is gone (hard node affinity)
HOST_GONE = (RayActorError, ActorUnschedulableError)
REVIVE_TRIES = 120  # about a minute of a Host that refuses at once, an hour of one that is silent
REVIVE_PROBE_S = 30.0
REVIVE_PAUSE_S = 0.5


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    value: T  # what the Host's method returned


@dataclass(frozen=True, slots=True)
class Gone:
    error: str  # the innermost error's one-line message


@dataclass(frozen=True, slots=True)
class Failed:
    error: str  # the innermost error's one-line message
    stale: bool = False  # StaleEpoch: a fence above the Host's epoch refused its commit


@dataclass(frozen=True, slots=True)
class Stalled:
    answer: asyncio.Future[Reply[Any]]  # the late reply; never raises


Reply = Done[T] | Gone | Failed | Stalled


class HostClient:
    """Calls on one Host actor, each with its timeout, answered as a `Reply`."""

    __slots__ = ("handle", "host_id", "watchdog_s")

    def __init__(self, handle: Any, host_id: str, watchdog_s: float) -> None:
        self.handle = handle
        self.host_id = host_id
        self.watchdog_s = watchdog_s

    # -- lifecycle: the watchdog -----------------------------------------------------------
    async def bind(self, agent_id: str, hot: Any, epoch: int) -> Reply[dict[str, Any]]:
        """Make `agent_id` resident under `epoch`: from the hot tier (`hot`, an object
        reference of parked bytes) when given, else, or when that object is lost with its
        owner, from disk (then the answer's `tier` is "disk"). One watchdog for both."""
        return await self._within(self._bind(agent_id, hot, epoch), self.watchdog_s)

    async def park(self) -> Reply[bytes]:
        """Commit the resident agent and unbind it; the checkpoint's bytes."""
        return await self._within(self._call("park"), self.watchdog_s)

    async def run(
        self, agent_id: str, batch: list[Any], headroom: float, dispatch: int
    ) -> Reply[tuple[list[Any], list[dict[str, Any]], int]]:
        """Run a batch on the resident agent: outcomes, the run's events, KV tokens held after.
        The Host tags its reports of the agent's state during the batch with `dispatch`."""
        ref = self.handle.run.options(name=f"{agent_id}.run").remote(batch, headroom, dispatch)
        return await self._within(_future(ref), self.watchdog_s)

    def release(self) -> asyncio.Future[Reply[None]]:
        """Unbind the agent without a commit. Submitted now, before any later call; await the
        reply or leave it (it is always retrieved: nothing is logged as lost)."""
        return _replied(self._call("release"))

    # -- probes: the caller's timeout, else the watchdog -----------------------------------
    async def info(self, timeout_s: float | None = None) -> Reply[dict[str, Any]]:
        return await self._probe("info", timeout_s)

    async def measure(self, timeout_s: float | None = None) -> Reply[dict[str, Any]]:
        return await self._probe("measure", timeout_s)

    async def engine_info(self, timeout_s: float | None = None) -> Reply[dict[str, Any]]:
        return await self._probe("engine_info", timeout_s)

    async def pause_engine(self, timeout_s: float | None = None) -> Reply[bool]:
        return await self._probe("pause_engine", timeout_s)

    async def wake_engine(self, timeout_s: float | None = None) -> Reply[bool]:
        return await self._probe("wake_engine", timeout_s)

    async def revive(
        self, tries: int = REVIVE_TRIES, probe_s: float = REVIVE_PROBE_S, pause_s: float = REVIVE_PAUSE_S
    ) -> bool:
        """Wait until a lost Host answers `info` again (Ray restarts it); False if it never did
        within `tries` probes (each `probe_s` at most, `pause_s` apart)."""
        for _ in range(tries):
            if isinstance(await self.info(probe_s), Done):
                return True
            await asyncio.sleep(pause_s)
        return False

    # -- the plumbing ----------------------------------------------------------------------
    def _call(self, method: str, *args: Any) -> asyncio.Future[Any]:
        return _future(getattr(self.handle, method).remote(*args))

    async def _probe(self, method: str, timeout_s: float | None) -> Reply[Any]:
        return await self._within(self._call(method), self.watchdog_s if timeout_s is None else timeout_s)

    async def _bind(self, agent_id: str, hot: Any, epoch: int) -> Any:
        if hot is not None:
            try:
                return await self._call("bind", agent_id, hot, epoch)
            except HOST_GONE:
                raise
            except RayError:  # the object was lost with its owner: the durable tier
                pass
        return await self._call("bind", agent_id, None, epoch)

    @staticmethod
    async def _within(call: Any, timeout_s: float) -> Reply[Any]:
        """`call`'s reply, or `Stalled` past `timeout_s` (the call goes on; its late reply
        resolves `Stalled.answer`)."""
        late = asyncio.ensure_future(call)
        if not (await asyncio.wait({late}, timeout=timeout_s))[0]:
            return Stalled(_replied(late))
        return reply_of(late)


def reply_of(done: asyncio.Future[Any]) -> Reply[Any]:
    """The `Reply` of a finished call."""
    exc = done.exception()
    if exc is None:
        return Done(done.result())
    if isinstance(exc, HOST_GONE):
        return Gone(cause(exc))
    if isinstance(exc, Exception):
        return Failed(cause(exc), stale=isinstance(getattr(exc, "cause", None), StaleEpoch))
    raise exc  # KeyboardInterrupt and the like are not a Host's answer


def cause(exc: BaseException) -> str:
    """The innermost error's one-line message."""
    inner = getattr(exc, "cause", None) or exc
    text = f"{type(inner).__name__}: {inner}"
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _future(ref: Any) -> asyncio.Future[Any]:
    """An asyncio future of a Ray call."""
    return asyncio.wrap_future(ref.future())


def _replied(late: asyncio.Future[Any]) -> asyncio.Future[Reply[Any]]:
    """A future of `late`'s `Reply`, resolved when `late` ends; it never raises."""
    out: asyncio.Future[Reply[Any]] = asyncio.get_running_loop().create_future()

    def settle(f: asyncio.Future[Any]) -> None:
        if not out.done():
            out.set_result(Failed("cancelled") if f.cancelled() else reply_of(f))

    late.add_done_callback(settle)
    return out
