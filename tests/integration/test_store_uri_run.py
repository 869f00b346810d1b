"""A whole run whose store is named by a URI (`pool.checkpoint_dir`, `--checkpoint-dir`): the
driver hands the URI to the manager, Hosts and monitor as it is. Across processes only a real
filesystem works (Arrow's mock:// is per process), so the URI here is a file:// one."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from agents.config import load_settings
from pool.driver.batch import RunOptions, run_batch
from pool.driver.synthetic import synthetic_tasks, write_tasks
from pool.store.checkpoint import CheckpointStore

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
