"""More than one machine: a three-node Ray (a CPU head and two nodes with a logical GPU each).

Each node has a local root of its own (its `TMPDIR`: a Host's temp and slot files) and every
worker notes the files it opens (`node_audit`); the checkpoints live in one shared store. A third
GPU node joins and is removed mid-run: its agents go on elsewhere through that store, and no
process opens another node's root. Then one of the two GPU nodes is removed mid-run; its resident
agents come back from their checkpoints on the other node's Hosts, and every task ends exactly
once.
"""

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import ray

from agents.config import load_settings
from pool.driver.batch import RunOptions, run_batch
from pool.driver.runs import shutdown_pool
from pool.driver.synthetic import synthetic_tasks, write_tasks

pytestmark = pytest.mark.integration

SLOTS = 2
TASKS = 160
NS = "selfheal-multi"  # run id "multi": the run's pool lives in <pool.namespace>-<run id>
HERE = Path(__file__).resolve().parent
NO_FAULTS = {k: 0.0 for k in ("garbage", "truncation", "timeout", "oom", "crash", "permanent")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    base = tmp_path_factory.mktemp("nodes")
    roots = {name: base / name for name in ("head", "node-0", "node-1")}
    for root in roots.values():
        root.mkdir()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0, "env_vars": {"TMPDIR": str(roots["head"])}})
    c.gpu_nodes = [c.add_node(num_cpus=1, num_gpus=1, env_vars={"TMPDIR": str(roots[f"node-{i}"])})  # type: ignore[attr-defined]
                   for i in range(2)]
    c.wait_for_nodes()
    c.audit_base, c.roots = base, roots  # type: ignore[attr-defined]
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(address=c.address, namespace="selfheal", log_to_driver=False, runtime_env={
        "worker_process_setup_hook": "node_audit.install",
        "env_vars": {"PYTHONPATH": path, "NODE_AUDIT_BASE": str(base)}})
    yield c
    ray.shutdown()
    c.shutdown()


def _lines(path: Path) -> int:
    return sum(1 for _ in open(path)) if path.exists() else 0


def _status(namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = ray.get(ray.get_actor("pool-manager", namespace=namespace).status.remote())
    return status


def _residents_on(status: dict[str, Any], node8: str) -> set[str]:
    """The agents resident on Hosts of the node whose id starts with `node8`."""
    return {h["agent"] for h in status["hosts"] if h["host"].split("-")[1] == node8 and h["agent"]}


def _opened(base: Path) -> dict[str, set[str]]:
    """The paths each worker opened, by the worker's own root (`node_audit`'s logs)."""
    out: dict[str, set[str]] = {}
    for log in (base / "audit").glob("*.log"):
        for line in log.read_text().splitlines():
            own, path = line.split("\t", 1)
            out.setdefault(own, set()).add(path)
    return out


def test_each_node_keeps_to_its_own_root_and_agents_move_through_the_shared_store(
    cluster: object, tmp_path: Path
) -> None:
    """A third GPU node joins with its own root and is removed mid-run: its resident agents
    continue on the other nodes from the shared store (a move the planner cannot avoid)."""

    base: Path = cluster.audit_base  # type: ignore[attr-defined]
    roots: dict[str, Path] = cluster.roots  # type: ignore[attr-defined]
    roots["node-2"] = base / "node-2"
    roots["node-2"].mkdir()
    extra = cluster.add_node(  # type: ignore[attr-defined]
        num_cpus=1, num_gpus=1, env_vars={"TMPDIR": str(roots["node-2"])})
    cluster.wait_for_nodes()  # type: ignore[attr-defined]
    extra8 = extra.node_id[:8]
    store = base / "shared" / "store"  # one folder every node sees: the cluster's EFS mount
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(TASKS, agents=16, seed=5))
    settings = load_settings(overrides={
        "engine": {"kind": "scripted", "faults": NO_FAULTS, "step_cost_s": 0.03},
        "pool": {"slots_per_gpu": SLOTS, "batch_per_agent": 2, "checkpoint_dir": str(store)},
    })
    out = tmp_path / "out"
    runner = threading.Thread(target=lambda: run_batch(RunOptions(
        tasks=tasks, out=out, settings=settings, agents=16, progress=False, run_id="roots",
        keep_pool=True)))
    runner.start()
    deadline = time.monotonic() + 120
    while _lines(out / "ledger.jsonl") < TASKS // 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    on_extra = _residents_on(_status("selfheal-roots"), extra8)
    assert on_extra, "the third node held resident agents"
    cluster.remove_node(extra)  # type: ignore[attr-defined]
    runner.join(timeout=90)
    assert not runner.is_alive(), "the run finished after the node loss"
    shutdown_pool("selfheal-roots")

    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == TASKS and Counter(r["status"] for r in rows) == {"succeeded": TASKS}
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    t_lost = next(e["ts"] for e in events if e["event"] == "pool.node_lost")
    moved = {e["agent_id"] for e in events if e["event"] == "pool.activated"
             and e["ts"] > t_lost and extra8 not in e["host"]} & on_extra
    assert moved, f"agents of the lost node ({on_extra}) went on elsewhere"

    opened = _opened(base)
    by_root = {str(root): name for name, root in roots.items()}
    assert set(opened) <= set(by_root), f"every worker runs with its node's root: {set(opened)}"
    for own, paths in opened.items():
        others = [str(root) for root in roots.values() if str(root) != own]
        trespass = sorted(p for p in paths if any(p.startswith(o + os.sep) for o in others))
        assert not trespass, f"a process of {by_root[own]} opened another node's files: {trespass}"
    users = {by_root[own] for own, paths in opened.items()
             if any(p.startswith(f"{store}{os.sep}agents{os.sep}") for p in paths)}
    assert {"node-0", "node-1"} <= users, f"Hosts on both nodes use the shared store: {users}"


def test_node_loss_moves_agents_to_the_other_node(cluster: object, tmp_path: Path) -> None:

    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(TASKS, agents=16, seed=11))
    settings = load_settings(overrides={
        "engine": {"kind": "scripted", "faults": NO_FAULTS, "step_cost_s": 0.03},
        "pool": {"slots_per_gpu": SLOTS, "batch_per_agent": 2},
    })
    out = tmp_path / "out"
    done: dict[str, object] = {}
    runner = threading.Thread(target=lambda: done.update(summary=run_batch(RunOptions(
        tasks=tasks, out=out, settings=settings, agents=16, progress=False, run_id="multi",
        keep_pool=True))))
    runner.start()

    deadline = time.monotonic() + 120
    while _lines(out / "ledger.jsonl") < TASKS // 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    where = {a["Name"]: a["Address"]["NodeID"][:8]
             for a in ray._private.state.state.actor_table(None).values() if a["State"] == "ALIVE"}
    head = next(n["NodeID"][:8] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
    assert where["pool-manager"] == where["health-monitor"] == head, "control actors on the head"
    victim = cluster.gpu_nodes[-1]  # type: ignore[attr-defined]
    victim8 = victim.node_id[:8]
    status = _status(NS)
    hosts_by_node = Counter(h["host"].split("-")[1] for h in status["hosts"])
    assert len(hosts_by_node) == 2 and set(hosts_by_node.values()) == {SLOTS}, hosts_by_node
    on_victim = _residents_on(status, victim8)
    assert on_victim, "the lost node held resident agents"
    cluster.remove_node(victim)  # type: ignore[attr-defined]
    runner.join(timeout=90)
    assert not runner.is_alive(), "the run finished after the node loss"

    rows = pq.read_table(out / "results.parquet").to_pylist()
    ids = [r["task_id"] for r in rows]
    assert len(ids) == len(set(ids)) == TASKS, "every task exactly once"
    assert Counter(r["status"] for r in rows) == {"succeeded": TASKS}

    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    lost = [e for e in events if e["event"] == "pool.node_lost"]
    assert [e["node"] for e in lost] == [victim8]
    t_lost = lost[0]["ts"]
    later = [e for e in events if e["event"] == "pool.activated" and e["ts"] > t_lost]
    assert later and all(victim8 not in e["host"] for e in later), "nothing placed on the dead node"
    moved = {e["agent_id"] for e in later} & on_victim
    assert moved, f"agents of the lost node ({on_victim}) were activated on the other node"
    status = ray.get(ray.get_actor("pool-manager", namespace=NS).status.remote())
    assert {h["host"] for h in status["hosts"] if h["dead"]} == {
        h["host"] for h in status["hosts"] if h["host"].split("-")[1] == victim8}
    migrated = [e for e in events if e["event"] == "pool.migrated" and e["agent_id"] in moved]
    assert migrated and all(e["why"] == "its Host died" and victim8 in e["src_host"]
                            and victim8 not in e["dst_host"] for e in migrated)
    shutdown_pool(NS)
