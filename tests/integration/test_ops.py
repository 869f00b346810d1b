"""Operating a pool: Prometheus metrics, dashboard names, and the operator commands.

One local Ray with its dashboard (the state API and the metrics agent need it) and one small
scripted batch whose fault mix leaves some agents FAILED; every test then looks at that pool.
"""

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from agents.config import load_settings
from pool.control.gate import GATE_NAME
from pool.driver.batch import RunOptions, run_batch
from pool.driver.synthetic import synthetic_tasks, write_tasks
from pool.ops.cli import main
from pool.ops.metrics import METRICS, PREFIX

pytestmark = pytest.mark.integration

AGENTS = 12
SLOTS = 3


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ctx = ray.init(address="local", num_gpus=1, num_cpus=2, namespace="selfheal",
                   include_dashboard=True, log_to_driver=False,
                   _system_config={"metrics_report_interval_ms": 1000})
    tmp = tmp_path_factory.mktemp("ops")
    tasks = write_tasks(tmp / "tasks.jsonl", synthetic_tasks(60, agents=AGENTS, seed=5))
    settings = load_settings(overrides={
        "engine": {"kind": "scripted", "faults": {"oom": 0.2, "permanent": 0.4, "garbage": 0.1,
                                                  "crash": 0.1}},
        "pool": {"slots_per_gpu": SLOTS, "batch_per_agent": 1},
        # A task that never answers well makes two restarts (compress, migrate) with no healthy
        # answer between them to forgive one: agents with a few such tasks go FAILED.
        "recovery": {"intensity": 1},
    })
    summary = run_batch(RunOptions(tasks=tasks, out=tmp / "out", settings=settings,
                                   agents=AGENTS, progress=False, keep_pool=True))
    yield {"summary": summary, "out": tmp / "out", "gcs": ctx.address_info["gcs_address"]}
    ray.shutdown()


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def _scrape(deadline_s: float, ready: Callable[[dict[str, float]], bool]) -> dict[str, float]:
    """Poll every node's metrics endpoint until `ready` (the export lags a few seconds)."""
    import ray

    ports = {(n["NodeManagerAddress"], n["MetricsExportPort"]) for n in ray.nodes() if n["Alive"]}
    found: dict[str, float] = {}
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = {}
        for host, port in ports:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            for line in text.splitlines():
                m = re.match(r"^(ray_selfheal_\w+?)(?:_bucket|_count|_sum|_total)?(\{.*\})? (\S+)$",
                             line)
                if m:
                    key = m.group(1) + (m.group(2) or "")
                    found[key] = found.get(key, 0.0) + float(m.group(3))
        if ready(found):
            break
        time.sleep(1)
    return found


def _total(found: dict[str, float], name: str, tag: str = "") -> float:
    return sum(v for k, v in found.items() if k.startswith(f"ray_selfheal_{name}{{") and tag in k)


def test_metrics_are_exported_to_prometheus(pool: dict) -> None:
    want = {f"ray_{PREFIX}{name}" for name in METRICS} - {"ray_selfheal_hosts_lost"}
    tasks = pool["summary"]["tasks"]

    def ready(found: dict[str, float]) -> bool:
        names = {k.split("{")[0] for k in found}
        return want <= names and _total(found, "tasks") == tasks

    found = _scrape(60, ready)
    names = {k.split("{")[0] for k in found}
    assert want <= names, sorted(want - names)
    assert _total(found, "tasks") == tasks
    assert _total(found, "agents") == AGENTS  # the gauge comes from the registry buckets
    assert _total(found, "tasks", 'status="failed"') == pool["summary"]["failed"]
    assert _total(found, "recoveries", 'tier="2"') > 0
    assert _total(found, "vram_budget_mib", 'gpu="0"') == 8192
    assert _total(found, "activations") >= AGENTS
    assert all('run="selfheal-' in k for k in found), "every metric names its run"
    raw = _raw_names()
    from pool.ops.grafana import dashboard

    queried = {m for p in dashboard()["panels"] for t in p["targets"]
               for m in re.findall(r"ray_selfheal_\w+", t["expr"])}
    assert queried - {"ray_selfheal_hosts_lost_total"} <= raw, sorted(queried - raw)


def _raw_names() -> set[str]:
    """The metric names as Prometheus scrapes them (what the Grafana dashboard must query)."""
    import ray

    names: set[str] = set()
    for n in ray.nodes():
        if n["Alive"]:
            url = f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                names |= set(re.findall(r"^(ray_selfheal_\w+)", resp.read().decode(), re.M))
    return names


def test_dashboard_names_hosts_and_run_tasks(pool: dict) -> None:
    from ray.util.state import list_actors, list_tasks

    actors = list_actors(address=pool["gcs"], filters=[("state", "=", "ALIVE")], limit=1000)
    names = {a.name for a in actors if a.name and a.name != GATE_NAME}  # the gate is the cluster's
    assert {"pool-manager", "health-monitor"} <= names
    hosts = sorted(n for n in names if n.startswith("host-"))
    assert len(hosts) == SLOTS
    assert all(re.fullmatch(r"host-[0-9a-f]{8}-0-\d+", h) for h in hosts), hosts
    assert all(a.ray_namespace.startswith("selfheal-") for a in actors if a.name in names)
    assert len({a.ray_namespace for a in actors if a.name in names}) == 1  # the run's own
    ids = {f"agent-{i:06d}.run" for i in range(AGENTS)}
    named = {t.name for t in list_tasks(address=pool["gcs"], limit=10_000) if t.name.endswith(".run")}
    assert named and named <= ids, named - ids  # the dashboard shows who ran: `<agent_id>.run`


def test_status_table_and_json(pool: dict) -> None:
    out = _cli("status")
    for word in ("dormant", "VRAM ledger", "host-", "queue: 0 tasks"):
        assert word in out, out
    data = json.loads(_cli("status", "--json"))
    assert data["agents"] == AGENTS and len(data["hosts"]) == SLOTS
    assert data["ledger"][0]["budget_mib"] == 8192
    # The registry follows the Hosts: a resident agent is in the state its last task left it
    # (DEGRADED after an unhealthy answer), not IDLE whatever happened.
    last = {r["agent_id"]: r["agent_state"]
            for r in pq.read_table(pool["out"] / "results.parquet").to_pylist() if r["agent_state"]}
    for agent in {h["agent"] for h in data["hosts"] if h["agent"]}:
        state = json.loads(_cli("inspect", agent, "--json"))["state"]
        assert state == last[agent] and state in ("idle", "degraded"), (agent, state, last[agent])


def test_status_in_a_new_process_with_address(pool: dict) -> None:
    exe = Path(sys.executable).with_name("selfheal")
    got = subprocess.run([str(exe), "status", "--json", "--address", pool["gcs"]],
                         capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["agents"] == AGENTS


def test_no_pool_is_one_line_error() -> None:
    exe = Path(sys.executable).with_name("selfheal")
    got = subprocess.run([str(exe), "status", "--address", "127.0.0.1:9"], capture_output=True,
                         text=True, timeout=60)
    assert got.returncode == 2 and got.stderr.strip() == "error: no Ray cluster is running at 127.0.0.1:9"


def test_wrong_namespace_says_no_pool(pool: dict) -> None:
    result = CliRunner().invoke(main, ["status", "--namespace", "nobody"])
    assert result.exit_code == 2 and "no selfheal pool is running" in result.output


def test_failed_inspect_retry(pool: dict) -> None:
    failed = json.loads(_cli("failed", "--json"))
    assert failed["agents"], "the fault mix leaves FAILED agents"
    assert all(a["reason"] for a in failed["agents"])
    assert failed["dead_letters"] and all(d["reason"] for d in failed["dead_letters"])
    assert "FAILED agents" in _cli("failed")

    victim = failed["agents"][0]["agent_id"]
    info = json.loads(_cli("inspect", victim, "--json"))
    assert info["state"] == "failed" and info["failed"]
    assert info["versions"] and info["versions"][-1]["version"] >= 2
    assert info["reports"] and any(e["event"] == "pool.agent_failed" or e["event"] == "agent.failed"
                                   for e in info["history"]), info["history"]
    assert "checkpoint versions" in _cli("inspect", victim)

    out = _cli("retry", victim)
    assert f"{victim}: released to DORMANT" in out
    assert json.loads(_cli("inspect", victim, "--json"))["state"] == "dormant"
    rest = [a["agent_id"] for a in failed["agents"][1:]]
    out = _cli("retry", "--all")
    assert all(f"{a}: released" in out for a in rest)
    assert json.loads(_cli("failed", "--json"))["agents"] == []
    assert CliRunner().invoke(main, ["inspect", "nobody"]).exit_code == 2


def test_pause_parks_when_the_engine_cannot_sleep_and_resume_takes_the_gpu_again(pool: dict) -> None:
    out = _cli("pause")
    assert "gpu 0:" in out and "agents parked" in out and "selfheal resume" in out, out
    data = json.loads(_cli("status", "--json"))
    assert data["ledger"][0]["paused"] == "parked"
    assert not any(h["agent"] for h in data["hosts"])
    assert "parked" in _cli("status")
    assert "resumed" in _cli("resume")
    assert json.loads(_cli("status", "--json"))["ledger"][0]["paused"] is None


def test_runs_lists_the_kept_pool_and_stop_gives_the_cluster_back(pool: dict) -> None:
    """Last in this module: it ends the pool the other tests look at."""
    import ray

    from pool.ops.checks import check_resources

    runs = json.loads(_cli("runs", "--json"))
    assert len(runs) == 1 and runs[0]["namespace"] == f"selfheal-{runs[0]['run']}"
    assert _cli("status", "--run", runs[0]["run"], "--json")
    assert CliRunner().invoke(main, ["status", "--run", "nosuchrun"]).exit_code == 2
    held = ray.available_resources().get("GPU", 0)
    assert held < 0.01, "the kept pool holds the GPU shares"
    assert "stopped" in _cli("stop")
    check = check_resources()
    assert check.ok, check.line()
    assert json.loads(_cli("runs", "--json")) == []
