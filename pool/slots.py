"""The pool's warm Hosts: one `Slot` per Host actor, created per GPU of every GPU node.

Host names are `host-<node>-<gpu>-<k>` (readable in the Ray dashboard); the pool's GPU index of
a slot runs over all nodes (by node id, then Ray's GPU id), and a Host is pinned to its node
(hard node affinity), so a Host whose node is gone can never restart and is retired (`dead`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray
from ray.exceptions import ActorUnschedulableError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agents.config import Settings
from agents.errors import UsageError
from pool.actors import HostActor, engine_threads
from pool.budget import Ledger

# a Host that died, or cannot restart because its node is gone (hard node affinity)
HOST_GONE = (RayActorError, ActorUnschedulableError)


class Slot:
    """A warm Host and what it holds."""

    __slots__ = ("handle", "host_id", "gpu", "agent", "busy", "lost", "dead")

    def __init__(self, handle: Any, host_id: str, gpu: int) -> None:
        self.handle = handle
        self.host_id = host_id
        self.gpu = gpu
        self.agent: str | None = None
        self.busy = False  # a call (run, park, bind) is in flight
        self.lost = 0  # times this Host died under an agent
        self.dead = False  # its node is gone: the Host can never restart there

    @property
    def node(self) -> str:
        return self.host_id.split("-")[1]


def create_hosts(settings: Settings, store_root: str) -> tuple[list[Slot], Ledger]:
    """`slots_per_gpu` Hosts on every GPU of every live GPU node, and the ledger of those GPUs."""
    cfg = settings.pool
    alive = [n for n in ray.nodes() if n["Alive"]]  # type: ignore[no-untyped-call]
    nodes = [n for n in alive if n["Resources"].get("GPU", 0) >= 1]
    if not nodes:
        raise UsageError("the Ray cluster has no GPU resources; start Ray with num_gpus >= 1")
    slots: list[Slot] = []
    k = cfg.slots_per_gpu
    for node in nodes:
        node_id, gpus = node["NodeID"], int(node["Resources"]["GPU"])
        threads = engine_threads(settings, gpus * k)
        for g in range(gpus):
            for i in range(k):
                host_id = f"host-{node_id[:8]}-{g}-{i}"
                options = HostActor.options(  # type: ignore[attr-defined]
                    name=host_id, namespace=cfg.namespace, num_gpus=1 / k,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                )
                handle = _spawn(options, host_id, settings, store_root, threads)
                slots.append(Slot(handle, host_id, len(slots) // k))
    ledger = Ledger(cfg.budget_mib, cfg.watermark, cfg.engine_base_mib, len(slots) // k, k)
    return slots, ledger


def place_on_gpus(slots: list[Slot], infos: list[dict[str, Any]]) -> None:
    """Index each slot by the GPU Ray actually gave its Host (`info()`: node and GPU id), in
    node order: Ray packs fractional GPUs as it likes, and Hosts that share a device (and its
    engine) must share a ledger line."""
    devices = sorted({(i["node"], i["gpu"]) for i in infos}, key=lambda d: (d[0], int(d[1])))
    index = {d: n for n, d in enumerate(devices)}
    for slot, info in zip(slots, infos, strict=True):
        slot.gpu = index[(info["node"], info["gpu"])]


def _spawn(options: Any, host_id: str, *args: Any) -> Any:
    """A new Host. After a manager restart, the dead manager's Host (its name) dies with a lag."""
    for _ in range(300):
        try:
            return options.remote(host_id, *args)
        except ValueError:  # ActorAlreadyExistsError: the old Host is still being torn down
            time.sleep(0.1)
    raise UsageError(f"Host name {host_id} stays taken: is another pool running in this namespace?")


def as_future(ref: Any) -> asyncio.Future[Any]:
    """An asyncio future of a Ray call (for `asyncio.wait` / `wait_for` with a timeout)."""
    return asyncio.wrap_future(ref.future())


def cause(exc: BaseException) -> str:
    """The innermost error's one-line message."""
    inner = getattr(exc, "cause", None) or exc
    text = f"{type(inner).__name__}: {inner}"
    return text.splitlines()[0][:300] if text else type(exc).__name__
