"""What the pool writes holds agents' memories and answers: folders 0700, files 0600.

The umask is cleared for these tests, so each mode comes from the code, not from the machine.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.config import load_settings
from agents.models import AgentRecord, AgentSpec, TaskResult, TaskStatus
from pool.store.checkpoint import CheckpointStore
from pool.store.journal import ResultJournal, write_jsonl


@pytest.fixture(autouse=True)
def no_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    """Mode of every file and folder under `root` (itself included), by relative path."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def _assert_private(root: Path) -> None:
    wide = {p: oct(m) for p, m in _modes(root).items()
            if m != (0o700 if (root / p).is_dir() else 0o600)}
    assert not wide, f"not owner-only: {wide}"


def test_the_checkpoint_store_is_private(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    store.write_initial_many([AgentRecord(spec=AgentSpec(agent_id="batched"))])
    for i in range(3):
        store.write(AgentRecord(spec=AgentSpec(agent_id="a"), tasks_done=i), epoch=1)
    store.put_meta("PAUSED.json", b"{}")
    bad = store._folder("a") / store.latest("a").file  # type: ignore[union-attr]
    bad.write_bytes(b"garbage")  # quarantined by the next read
    os.chmod(bad, 0o600)
    store.read("a")
    (store._folder("a") / "MANIFEST.json").write_bytes(b"{")  # set aside and rebuilt
    os.chmod(store._folder("a") / "MANIFEST.json", 0o600)
    store.read("a")
    store.quarantine("batched", "a person said so")
    assert (tmp_path / "ckpt" / "quarantine" / "a").is_dir()
    _assert_private(tmp_path / "ckpt")


def test_the_ledger_and_its_quarantine_are_private(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    rec = TaskResult(task_id="t1", agent_id="a", status=TaskStatus.SUCCEEDED)
    ledger = ResultJournal(out / "ledger.jsonl")
    ledger.append([rec])
    ledger.close()
    with open(out / "ledger.jsonl", "ab") as fh:
        fh.write(b"bad line\n" + rec.model_copy(update={"task_id": "t2"}).model_dump_json().encode())
    ResultJournal(out / "ledger.jsonl").close()  # sets the bad line aside, rewrites the ledger
    write_jsonl(out / "events.jsonl", [{"event": "x"}])
    assert sorted(p.name for p in out.iterdir()) == [
        "events.jsonl", "ledger.jsonl", "ledger.quarantine.jsonl"]
    _assert_private(out)


def test_an_older_wider_ledger_is_narrowed_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b"")
    os.chmod(path, 0o644)  # written by an earlier version
    ResultJournal(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_results_and_summary_are_private(tmp_path: Path) -> None:
    from pool.driver.batch import RunOptions, run_batch

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"task_id": "t1", "agent_id": "a", "prompt": "hi"}) + "\n")
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    ledger = ResultJournal(out / "ledger.jsonl")  # every task committed: the run needs no Ray
    ledger.append([TaskResult(task_id="t1", agent_id="a", status=TaskStatus.SUCCEEDED)])
    ledger.close()
    settings = load_settings(overrides={"engine": {"kind": "scripted"}})
    run_batch(RunOptions(tasks=tasks, out=out, settings=settings, progress=False))
    assert {"results.parquet", "summary.json"} <= {p.name for p in out.iterdir()}
    _assert_private(out)
