"""More than one machine: a three-node Ray (a CPU head and two nodes with a logical GPU each).

The Hosts spread over both GPU nodes; one GPU node is removed mid-run; its resident agents come
back from their checkpoints on the other node's Hosts, and every task ends exactly once.
"""

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from agents.config import load_settings
from pool.driver.batch import RunOptions, run_batch
from pool.driver.runs import shutdown_pool
from pool.driver.synthetic import synthetic_tasks, write_tasks

pytestmark = pytest.mark.integration

SLOTS = 2
TASKS = 160
NS = "selfheal-multi"  # run id "multi": the run's pool lives in <pool.namespace>-<run id>
NO_FAULTS = {k: 0.0 for k in ("garbage", "truncation", "timeout", "oom", "crash", "permanent")}


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    c.gpu_nodes = [c.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]  # type: ignore[attr-defined]
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="selfheal", log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def _lines(path: Path) -> int:
    return sum(1 for _ in open(path)) if path.exists() else 0


def test_node_loss_moves_agents_to_the_other_node(cluster: object, tmp_path: Path) -> None:
    import ray

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
    status = ray.get(ray.get_actor("pool-manager", namespace=NS).status.remote())
    hosts_by_node = Counter(h["host"].split("-")[1] for h in status["hosts"])
    assert len(hosts_by_node) == 2 and set(hosts_by_node.values()) == {SLOTS}, hosts_by_node
    on_victim = {h["agent"] for h in status["hosts"] if h["host"].split("-")[1] == victim8
                 and h["agent"]}
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
