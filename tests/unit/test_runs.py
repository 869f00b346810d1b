"""A run's `--out` folder: one live driver at a time, stale locks taken over, unsafe folders
refused; each run's pool in a namespace of its own. No Ray here."""

import fcntl
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.config import load_settings
from agents.errors import UsageError
from pool.driver.runs import LOCK_NAME, OutLock, check_out_folder, for_run, split_namespace
from pool.ops.cli import main


def test_a_second_driver_on_a_live_out_is_refused_with_who_holds_it(tmp_path: Path) -> None:
    first = OutLock.acquire(tmp_path / "out", "selfheal-aaaa")
    with pytest.raises(UsageError, match=rf"in use by a live driver: pid {os.getpid()} on .*selfheal-aaaa"):
        OutLock.acquire(tmp_path / "out", "selfheal-bbbb")
    first.release()
    again = OutLock.acquire(tmp_path / "out", "selfheal-bbbb")  # released: free again
    assert again.stale is None
    again.release()


def test_a_stale_lock_of_a_dead_driver_is_taken_over_and_names_its_pool(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = {"pid": 999_999, "host": "elsewhere", "namespace": "selfheal-dead", "since": 1.0}
    (out / LOCK_NAME).write_text(json.dumps(dead))  # written, but no process holds the flock
    lock = OutLock.acquire(out, "selfheal-new")
    assert lock.stale is not None and lock.stale.namespace == "selfheal-dead"
    assert json.loads((out / LOCK_NAME).read_text())["namespace"] == "selfheal-new"
    lock.release()


def test_the_lock_is_held_by_the_kernel_not_by_the_file(tmp_path: Path) -> None:
    lock = OutLock.acquire(tmp_path / "out", "selfheal-aaaa")
    with open(tmp_path / "out" / LOCK_NAME) as fh, pytest.raises(BlockingIOError):
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.release()


def test_out_and_its_lock_are_private(tmp_path: Path) -> None:
    lock = OutLock.acquire(tmp_path / "out", "selfheal-aaaa")
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "out" / LOCK_NAME).stat().st_mode & 0o777 == 0o600
    lock.release()


def test_a_symlinked_out_or_ledger_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UsageError, match="is a symbolic link"):
        check_out_folder(tmp_path / "link")
    (real / "ledger.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(UsageError, match="ledger.jsonl is a symbolic link"):
        check_out_folder(real)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_an_out_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 4242, 4242)
    with pytest.raises(UsageError, match="belongs to another user"):
        check_out_folder(theirs)


def test_selfheal_run_on_a_live_out_exits_2_with_one_line(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"task_id": "t1", "agent_id": "a", "prompt": "hi"}\n')
    lock = OutLock.acquire(tmp_path / "out", "selfheal-live")
    result = CliRunner().invoke(main, ["run", "--engine", "scripted", "--tasks", str(tasks),
                                       "--out", str(tmp_path / "out"), "--no-progress"])
    lock.release()
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "in use by a live driver" in lines[0], result.output
    assert not (tmp_path / "out" / "ledger.jsonl").exists()  # refused before anything was written


def test_each_run_has_a_namespace_of_its_own() -> None:
    settings = load_settings()
    a, b = for_run(settings, "0001"), for_run(settings, "0002")
    assert a.pool.namespace == "selfheal-0001" != b.pool.namespace
    assert split_namespace(a.pool.namespace) == ("selfheal", "0001")
    assert a.engine == settings.engine and a.recovery == settings.recovery


def test_address_auto_means_the_cluster_ray_start_started(monkeypatch: pytest.MonkeyPatch) -> None:
    from pool.ops import attach as ops

    monkeypatch.setattr(ops, "_current_cluster", lambda: "127.0.0.1:9")
    with pytest.raises(UsageError, match=r"no Ray cluster is running at 127\.0\.0\.1:9$"):
        ops.connect("auto")  # before: "no Ray cluster is running at auto"


def test_the_start_gate_lets_one_pool_create_its_hosts_at_a_time() -> None:
    from pool.control.gate import GateState

    live = {"selfheal-a", "selfheal-b", "selfheal-c"}
    gate = GateState(lambda ns: ns in live)
    assert gate.try_take("selfheal-a")
    assert gate.try_take("selfheal-a")  # a restarted manager of the holder passes
    assert not gate.try_take("selfheal-b")
    gate.release("selfheal-b")  # not the holder: nothing changes
    assert not gate.try_take("selfheal-c")
    gate.release("selfheal-a")
    assert gate.try_take("selfheal-b") and not gate.try_take("selfheal-c")
    live.discard("selfheal-b")  # killed mid-start: its gate is free
    assert gate.try_take("selfheal-c")
