"""The pool's warm Hosts: created per GPU of every GPU node, each wrapped in a
`pool.control.hosts.HostClient` and seen by the scheduler as a `pool.control.facts.HostSlot`.

Host names are `host-<node>-<gpu>-<k>` (readable in the Ray dashboard); the pool's GPU index of
a slot runs over all nodes (by node id, then Ray's GPU id), and a Host is pinned to its node
(hard node affinity), so a Host whose node is gone can never restart and is retired
(`node_alive` says so; the scheduler marks it dead).
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
from pool.control.facts import HostSlot
from pool.control.hosts import Done, HostClient
from pool.runtime.actors import HostActor


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


def create_hosts(settings: Settings, store_root: str) -> tuple[list[HostClient], VramLedger]:
    """As many Hosts on every GPU of every live GPU node as the ledger lets reside there
    (`slots_per_gpu`, or fewer when llama.cpp's KV slots do not fit), and that ledger."""
    cfg = settings.pool
    alive = [n for n in ray.nodes() if n["Alive"]]  # type: ignore[no-untyped-call]
    nodes = [n for n in alive if n["Resources"].get("GPU", 0) >= 1]
    if not nodes:
        raise UsageError("the Ray cluster has no GPU resources; start Ray with num_gpus >= 1")
    ledger = empty_ledger(settings, sum(int(n["Resources"]["GPU"]) for n in nodes))
    clients: list[HostClient] = []
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
                clients.append(HostClient(handle, host_id, cfg.watchdog_s))
    return clients, ledger


async def locate(clients: list[HostClient]) -> list[HostSlot]:
    """Every Host as the scheduler sees it, once it answers `info()` (as long as Hosts take to
    start), indexed by the GPU Ray actually gave it, in node order: Ray packs fractional GPUs
    as it likes, and Hosts that share a device (and its engine) must share a ledger line."""
    replies = await asyncio.gather(*(c.info(timeout_s=DAY_S) for c in clients))
    infos = []
    for client, reply in zip(clients, replies, strict=True):
        if not isinstance(reply, Done):
            raise UsageError(f"Host {client.host_id} did not start: {reply}")
        infos.append(reply.value)
    devices = sorted({(i["node"], i["gpu"]) for i in infos}, key=lambda d: (d[0], int(d[1])))
    index = {d: n for n, d in enumerate(devices)}
    return [HostSlot(c.host_id, index[(i["node"], i["gpu"])], c.host_id.split("-")[1])
            for c, i in zip(clients, infos, strict=True)]


def node_alive(node: str) -> bool:
    """Is the node (the 8-character prefix in Host names) alive in the cluster?"""
    return any(n["NodeID"][:8] == node for n in ray.nodes() if n["Alive"])  # type: ignore[no-untyped-call]


def _spawn(options: Any, host_id: str, *args: Any) -> Any:
    """A new Host. After a manager restart, the dead manager's Host (its name) dies with a lag."""
    for _ in range(300):
        try:
            return options.remote(host_id, *args)
        except ValueError:  # ActorAlreadyExistsError: the old Host is still being torn down
            time.sleep(0.1)
    raise UsageError(f"Host name {host_id} stays taken: is another pool running in this namespace?")
