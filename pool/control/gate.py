"""One pool at a time creates its Hosts, so two runs that start together never split a GPU.

Each pool asks for every share of its GPUs (`slots_per_gpu` Hosts of `1/slots_per_gpu` each)
and starts only when all its Hosts are up. Two pools creating Hosts at once could each get half
of a GPU's shares and wait for the other for ever. The start gate, a detached actor per
namespace prefix, lets one pool create its Hosts and wait for them at a time; the next waits at
the gate, then takes the shares the first gives back when its run ends. A holder whose manager is
gone (killed mid-start) does not hold the gate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import ray

GATE_NAME = "start-gate"
POLL_S = 0.5


class GateState:
    """Who may create Hosts now (plain logic; the actor below polls it)."""

    def __init__(self, alive: Callable[[str], bool]) -> None:
        self.alive = alive  # is the pool (a run's namespace) still there?
        self.holder: str | None = None

    def try_take(self, who: str) -> bool:
        if self.holder in (None, who) or not self.alive(self.holder):
            self.holder = who
            return True
        return False

    def release(self, who: str) -> None:
        if self.holder == who:
            self.holder = None


def _manager_alive(namespace: str) -> bool:
    from pool.runtime.actors import MANAGER_NAME

    try:
        ray.get_actor(MANAGER_NAME, namespace=namespace)
    except ValueError:
        return False
    return True


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000)  # type: ignore[call-overload]
class StartGate:
    def __init__(self) -> None:
        self.state = GateState(_manager_alive)

    async def acquire(self, who: str) -> None:
        while not self.state.try_take(who):
            await asyncio.sleep(POLL_S)

    async def release(self, who: str) -> None:
        self.state.release(who)


def start_gate(prefix: str) -> Any:
    """The gate of the pools named `<prefix>-...` (created by the first pool that asks)."""
    return StartGate.options(  # type: ignore[attr-defined]
        name=GATE_NAME, namespace=prefix, lifetime="detached", get_if_exists=True).remote()
