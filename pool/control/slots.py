"""The pool's warm Hosts: one `Slot` per Host actor, created per GPU of every GPU node. A slot
calls its Host only through its `pool.control.hosts.HostClient`.

Host names are `host-<node>-<gpu>-<k>` (readable in the Ray dashboard); the pool's GPU index of
a slot runs over all nodes (by node id, then Ray's GPU id), and a Host is pinned to its node
(hard node affinity), so a Host whose node is gone can never restart and is retired (`dead`).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agents.config import DAY_S, EngineKind, Settings
from agents.engines.memory import MemoryPlan, plan_memory, read_shape
from agents.errors import UsageError
from pool.control.budget import VramLedger
from pool.control.hosts import Done, HostClient
from pool.runtime.actors import HostActor


class Slot:
    """A warm Host (its client) and what it holds."""

    __slots__ = ("host", "gpu", "agent", "busy", "lost", "dead", "kv_tokens")

    def __init__(self, host: HostClient, gpu: int) -> None:
        self.host = host
        self.gpu = gpu
        self.agent: str | None = None
        self.busy = False  # a call (run, park, bind) is in flight
        self.lost = 0  # times this Host died under an agent
        self.dead = False  # its node is gone: the Host can never restart there
        self.kv_tokens = 0  # KV the engine holds for its agent, as the Host last reported

    @property
    def host_id(self) -> str:
        return self.host.host_id

    @property
    def node(self) -> str:
        return self.host_id.split("-")[1]


def memory_plan(settings: Settings) -> MemoryPlan | None:
    """llama.cpp: how many agents one GPU holds, from the model's metadata; None for engines
    whose footprint is configured (scripted, vLLM)."""
    e, p = settings.engine, settings.pool
    if e.kind is not EngineKind.LLAMA_CPP:
        return None
    from agents.engines.llama_server import model_file

    shape = read_shape(model_file(e.model_path))
    return plan_memory(shape, p.budget_mib, p.watermark, e.n_ctx, p.slots_per_gpu, e.compute_mib)


def empty_ledger(settings: Settings, gpus: int) -> VramLedger:
    """The ledger of `gpus` GPUs before any agent is resident."""
    cfg, mem = settings.pool, memory_plan(settings)
    if mem is None:
        return replace(VramLedger.from_config(cfg), num_gpus=gpus)
    return VramLedger(cfg.budget_mib, cfg.watermark, math.ceil(mem.base_mib), gpus, mem.residents,
                  agent_mib=math.ceil(mem.slot_mib), kv_bytes_per_token=mem.kv_bytes_per_token)


def create_hosts(settings: Settings, store_root: str) -> tuple[list[Slot], VramLedger]:
    """As many Hosts on every GPU of every live GPU node as the ledger lets reside there
    (`slots_per_gpu`, or fewer when llama.cpp's KV slots do not fit), and that ledger."""
    cfg = settings.pool
    alive = [n for n in ray.nodes() if n["Alive"]]  # type: ignore[no-untyped-call]
    nodes = [n for n in alive if n["Resources"].get("GPU", 0) >= 1]
    if not nodes:
        raise UsageError("the Ray cluster has no GPU resources; start Ray with num_gpus >= 1")
    ledger = empty_ledger(settings, sum(int(n["Resources"]["GPU"]) for n in nodes))
    slots: list[Slot] = []
    k = ledger.slots_per_gpu
    for node in nodes:
        node_id, gpus = node["NodeID"], int(node["Resources"]["GPU"])
        for g in range(gpus):
            for i in range(k):
                host_id = f"host-{node_id[:8]}-{g}-{i}"
                options = HostActor.options(  # type: ignore[attr-defined]
                    name=host_id, namespace=cfg.namespace, num_gpus=1 / k,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                )
                handle = _spawn(options, host_id, settings, store_root, i, k)
                slots.append(Slot(HostClient(handle, host_id, cfg.watchdog_s), len(slots) // k))
    return slots, ledger


async def locate(slots: list[Slot]) -> list[dict[str, Any]]:
    """Every Host's `info()` (its node and GPU), waited for as long as the Hosts take to start."""
    replies = await asyncio.gather(*(s.host.info(timeout_s=DAY_S) for s in slots))
    for slot, reply in zip(slots, replies, strict=True):
        if not isinstance(reply, Done):
            raise UsageError(f"Host {slot.host_id} did not start: {reply}")
    return [r.value for r in replies if isinstance(r, Done)]


def place_on_gpus(slots: list[Slot], infos: list[dict[str, Any]]) -> None:
    """Index each slot by the GPU Ray actually gave its Host (`info()`: node and GPU id), in
    node order: Ray packs fractional GPUs as it likes, and Hosts that share a device (and its
    engine) must share a ledger line."""
    devices = sorted({(i["node"], i["gpu"]) for i in infos}, key=lambda d: (d[0], int(d[1])))
    index = {d: n for n, d in enumerate(devices)}
    for slot, info in zip(slots, infos, strict=True):
        slot.gpu = index[(info["node"], info["gpu"])]


def retire_node(slots: list[Slot], slot: Slot) -> list[Slot]:
    """A Host whose node died can never restart there: when `slot`'s node is no longer alive,
    mark every Host of that node dead and return them (none if it is alive or retired already)."""
    alive = {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}  # type: ignore[no-untyped-call]
    if slot.dead or slot.node in alive:
        return []
    gone = [s for s in slots if s.node == slot.node]
    for s in gone:
        s.dead = True
    return gone


def _spawn(options: Any, host_id: str, *args: Any) -> Any:
    """A new Host. After a manager restart, the dead manager's Host (its name) dies with a lag."""
    for _ in range(300):
        try:
            return options.remote(host_id, *args)
        except ValueError:  # ActorAlreadyExistsError: the old Host is still being torn down
            time.sleep(0.1)
    raise UsageError(f"Host name {host_id} stays taken: is another pool running in this namespace?")
