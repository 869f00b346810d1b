"""A whole run whose store is named by a URI (`pool.checkpoint_dir`, `--checkpoint-dir`): the
driver hands the URI to the manager, Hosts and monitor as it is. Across processes only a real
filesystem works (Arrow's mock:// is per process), so the URI here is a file:// one."""

import json
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from agents.config import load_settings
from pool.driver import batch
from pool.driver.batch import RunOptions, run_batch
from pool.driver.synthetic import synthetic_tasks, write_tasks
from pool.store.checkpoint import CheckpointStore
from pool.store.files import ObjectFiles
from pool.store.location import Location

pytestmark = pytest.mark.integration


def test_a_run_uses_a_store_named_by_a_file_uri(local_ray: None, tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(24, agents=4, seed=5))
    store = tmp_path / "shared" / "store"
    settings = load_settings(overrides={"engine": {"kind": "scripted"},
                                        "pool": {"checkpoint_dir": f"file://{store}"}})
    out = tmp_path / "out"
    summary = run_batch(RunOptions(tasks=tasks, out=out, settings=settings, agents=4, progress=False))

    assert summary["tasks"] == 24
    assert len(pq.read_table(out / "results.parquet")) == 24
    assert sorted(CheckpointStore(f"file://{store}").agent_ids()) == [f"agent-{i:06d}" for i in range(4)]
    assert (store / "registry").is_dir(), "the agent table lives in the store"
    assert not (out / "checkpoints").exists(), "nothing went to the default store under OUT"
    assert not [p for p in tmp_path.rglob("file:*")], "a URI was made into a local folder"


def test_a_run_whose_out_is_an_object_store_uri_commits_there_and_resumes_from_it(
    local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--out mock:///runs/a` stands for s3://: the driver works in a local copy and pushes it;
    a rerun from an empty cache (another machine) pulls the ledger and runs nothing again. The
    store is a local folder here: Arrow's mock:// is per process, and Hosts are processes."""
    bucket = pafs.FileSystem.from_uri("mock:///")[0]
    monkeypatch.setattr(Location, "filesystem", lambda self: bucket)  # one mock for the driver
    files = ObjectFiles(bucket)
    tasks = write_tasks(tmp_path / "tasks.jsonl", synthetic_tasks(24, agents=4, seed=6))
    settings = load_settings(overrides={"engine": {"kind": "scripted"},
                                        "pool": {"checkpoint_dir": str(tmp_path / "store")}})
    opts = RunOptions(tasks=tasks, out="mock:///runs/a", settings=settings, agents=4, progress=False)
    monkeypatch.setenv("SELFHEAL_CACHE", str(tmp_path / "cache-a"))
    assert run_batch(opts)["tasks"] == 24

    root = PurePosixPath("runs/a")
    ledger = b"".join(files.get(root / "ledger.d" / n) for n in files.names(root / "ledger.d"))
    assert len(ledger.splitlines()) == 24
    assert len(pq.read_table(pa.BufferReader(files.get(root / "results.parquet")))) == 24
    assert json.loads(files.get(root / "summary.json"))["tasks"] == 24
    assert not files.exists(root / "driver.lease"), "released at the end"

    monkeypatch.setenv("SELFHEAL_CACHE", str(tmp_path / "cache-b"))  # another machine's driver
    monkeypatch.setattr(batch, "_drive", lambda *a: pytest.fail("ran a task committed already"))
    assert run_batch(opts)["tasks"] == 24
    assert files.names(root / "ledger.d") == sorted(files.names(root / "ledger.d"))
    again = b"".join(files.get(root / "ledger.d" / n) for n in files.names(root / "ledger.d"))
    assert again == ledger, "nothing committed twice"
