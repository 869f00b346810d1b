"""`ray job submit` against a real `ray start --head`, and a driver killed with SIGKILL halfway.

The head runs in its own process group with its own HOME, token and free ports, so the test
neither depends on what earlier runs left in ~/.ray nor touches any other Ray on the machine.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from agents.errors import UsageError
from pool.driver.runs import OutLock
from pool.driver.synthetic import synthetic_tasks, write_tasks

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("head")
    (root / "home").mkdir()
    gcs, dash, *agent_ports = _free_ports(6)
    env = {**os.environ, "HOME": str(root / "home"), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "PATH": f"{BIN}:{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={agent_ports[0]}", f"--dashboard-agent-grpc-port={agent_ports[1]}",
           f"--metrics-export-port={agent_ports[2]}", f"--runtime-env-agent-port={agent_ports[3]}",
           "--num-gpus=1", "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={root / 'rt'}"]
    log = open(root / "head.log", "w")  # noqa: SIM115 - open for the head's whole life
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield {**env, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dash}", "RAY_ADDRESS": f"127.0.0.1:{gcs}"}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def _submit(
    env: dict[str, str], args: list[str], deadline_s: float = 240
) -> subprocess.CompletedProcess[str]:
    """Submit and wait; the dashboard and job agent need some seconds after the head starts."""
    job_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    stop = time.monotonic() + deadline_s
    while True:
        done = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--working-dir", str(REPO), "--", "python", *args],
            env=job_env, capture_output=True, text=True, timeout=deadline_s)
        text = done.stderr + done.stdout
        not_ready = "No available agent" in text or "Failed to connect to Ray" in text
        if not not_ready or time.monotonic() > stop:
            return done
        time.sleep(2)


def test_ray_job_submit_runs_the_batch(head: dict[str, str], tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(60, agents=20, seed=5))
    out = tmp_path / "out"
    done = _submit(head, ["scripts/run_batch.py", "--engine", "scripted", "--tasks", str(tasks),
                          "--agents", "20", "--out", str(out), "--no-progress"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(r["task_id"] for r in rows) == sorted(f"t{i:06d}" for i in range(60))


def test_driver_killed_halfway_then_rerun_loses_and_duplicates_nothing(
    head: dict[str, str], tmp_path: Path
) -> None:
    n = 400
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(n, agents=200, seed=9))
    config = tmp_path / "slow.yaml"
    config.write_text("engine:\n  step_cost_s: 0.01\npool:\n  batch_per_agent: 2\n")
    out = tmp_path / "out"
    cmd, driver = _driver_until(head, tasks, config, out, 200, committed=n // 4)
    ledger = out / "ledger.jsonl"
    with pytest.raises(UsageError, match=f"in use by a live driver: pid {driver.pid}"):
        OutLock.acquire(out, "selfheal-second")  # another driver's view (exit 2: test_runs.py)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    committed = _lines(ledger)
    assert n // 4 <= committed < n, committed

    rerun = subprocess.run(cmd, env=head, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    text = " ".join(rerun.stderr.split())  # rich wraps lines where the path and host name make it
    assert f"{n - committed} to run" in text
    assert "took over" in text and "from a dead driver" in text  # and shut the orphan pool down
    rows = pq.read_table(out / "results.parquet").to_pylist()
    ids = [r["task_id"] for r in rows]
    assert len(ids) == len(set(ids)) == n, "no task lost, none duplicated"
    records = [json.loads(line)["task_id"] for line in ledger.read_text().splitlines()]
    assert len(records) == len(set(records)) == n
    assert _free_gpu(head) == 1.0  # neither the killed driver's pool nor the rerun's holds it


def test_a_killed_drivers_pool_reaps_itself_after_the_orphan_timeout(
    head: dict[str, str], tmp_path: Path
) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(400, agents=50, seed=3))
    config = tmp_path / "orphan.yaml"
    config.write_text("engine:\n  step_cost_s: 0.02\npool:\n  orphan_timeout_s: 5\n")
    out = tmp_path / "out"
    _, driver = _driver_until(head, tasks, config, out, 50, committed=20)
    ledger = out / "ledger.jsonl"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert _lines(ledger) < 400
    assert _free_gpu(head, deadline_s=120) == 1.0  # nobody drains it: the pool reaped itself


def test_two_jobs_at_once_both_finish_and_give_the_gpu_back(head: dict[str, str], tmp_path: Path) -> None:
    jobs = []
    for k in (1, 2):
        tasks = write_tasks(tmp_path / f"tasks{k}.jsonl", synthetic_tasks(40, agents=8, seed=k))
        jobs.append(["scripts/run_batch.py", "--engine", "scripted", "--tasks", str(tasks),
                     "--agents", "8", "--out", str(tmp_path / f"out{k}"), "--no-progress"])
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda args: _submit(head, args, deadline_s=420), jobs))
    for d in done:
        said = [line for line in (d.stdout + d.stderr).splitlines() if "packaging.py" not in line]
        assert d.returncode == 0, "\n".join(said)[-4000:]
    for k in (1, 2):
        rows = pq.read_table(tmp_path / f"out{k}" / "results.parquet").to_pylist()
        assert len(rows) == 40 and {r["status"] for r in rows} <= {"succeeded", "failed"}
    assert _free_gpu(head) == 1.0


def _free_gpu(env: dict[str, str], deadline_s: float = 60) -> float:
    """The head's free GPU, once it is back to 1 (actors exit with a short lag) or at the deadline."""
    code = (f"import ray, time\nray.init(log_to_driver=False)\nend = time.monotonic() + {deadline_s}\n"
            "while ray.available_resources().get('GPU', 0) < 1 and time.monotonic() < end:\n"
            "    time.sleep(0.5)\nprint(ray.available_resources().get('GPU', 0))\n")
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=deadline_s + 60)
    assert got.returncode == 0, got.stderr[-2000:]
    return float(got.stdout.strip().splitlines()[-1])


def _driver_until(env: dict[str, str], tasks: Path, config: Path, out: Path, agents: int,
                  committed: int) -> tuple[list[str], subprocess.Popen[bytes]]:
    """A scripted driver run directly against the head, returned once `committed` results are
    in its ledger (to be killed), with its command line (to run it again)."""
    cmd = [sys.executable, str(REPO / "scripts/run_batch.py"), "--engine", "scripted", "--tasks", str(tasks),
           "--agents", str(agents), "--config", str(config), "--out", str(out), "--no-progress"]
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = out / "ledger.jsonl"
    stop = time.monotonic() + 180
    while time.monotonic() < stop and (not ledger.exists() or _lines(ledger) < committed):
        assert driver.poll() is None, "the driver ended before it could be killed"
        time.sleep(0.05)
    return cmd, driver


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")
