"""A run's store by URI: `--checkpoint-dir` / `pool.checkpoint_dir` reach the pool as the string
given (an s3:// URI is never made into a local path); a relative path stays under `--out`. No Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agents.config import load_settings
from pool.driver import batch
from pool.ops.cli import main
from pool.store.location import run_root


def _root(out: Path | str, where: str | None) -> str:
    overrides = {"pool": {"checkpoint_dir": where}} if where is not None else {}
    return run_root(out, load_settings(None, overrides).pool.checkpoint_dir)


@pytest.mark.parametrize("uri", ["s3://bucket/selfheal", "gs://bucket/x/y", "mock:///m"])
def test_an_object_store_uri_reaches_the_pool_unchanged(tmp_path: Path, uri: str) -> None:
    assert _root(tmp_path / "out", uri) == uri


def test_a_path_is_resolved_and_a_relative_one_is_under_out(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = Path("runs/a")
    assert _root(out, None) == str(tmp_path / "runs/a/checkpoints")  # the default, as before
    assert _root(out, "ck/x") == str(tmp_path / "runs/a/ck/x")
    assert _root(out, str(tmp_path / "abs")) == str(tmp_path / "abs")
    assert _root(out, f"file://{tmp_path}/f") == str(tmp_path / "f")
    assert _root(f"file://{tmp_path}/runs/b", None) == str(tmp_path / "runs/b/checkpoints")


def test_an_object_store_out_keeps_a_relative_store_under_its_uri() -> None:
    assert _root("s3://bucket/runs/a/", None) == "s3://bucket/runs/a/checkpoints"
    assert _root("gs://bucket/r", "ck/x") == "gs://bucket/r/ck/x"
    assert _root("gs://bucket/r", "s3://other/store") == "s3://other/store"


def _run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *flags: str) -> tuple[Any, list[Any]]:
    seen: list[Any] = []
    monkeypatch.setattr(batch, "run_batch", seen.append)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"task_id": "t1", "agent_id": "a", "prompt": "hi"}\n')
    got = CliRunner().invoke(main, ["run", "--engine", "scripted", "--tasks", str(tasks),
                                    "--out", str(tmp_path / "out"), *flags])
    return got, seen


def test_selfheal_run_takes_a_store_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got, seen = _run(monkeypatch, tmp_path, "--checkpoint-dir", "s3://bucket/selfheal")
    assert got.exit_code == 0, got.output
    assert seen[0].settings.pool.checkpoint_dir == "s3://bucket/selfheal"


def test_selfheal_run_refuses_a_bad_store_scheme_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    got, seen = _run(monkeypatch, tmp_path, "--checkpoint-dir", "ftp://host/x")
    assert got.exit_code == 2 and not seen
    assert got.stderr.splitlines() == ["error: config: pool.checkpoint_dir: ftp://host/x: storage "
                                       "scheme 'ftp' is not supported (a path, file://, s3:// or gs://)"]


@pytest.mark.parametrize("command", ["run", "retry"])
def test_help_says_the_store_and_out_take_a_uri(command: str) -> None:
    text = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split("Options:")[1].split())
    store = text.split("--checkpoint-dir")[1]
    assert "s3://" in store and "gs://" in store
    assert "s3:// or gs:// URI" in text.split("--out")[1].split("--")[0]


def test_retry_out_passes_a_store_uri_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pool.driver import requeue

    seen: list[Any] = []
    monkeypatch.setattr(requeue, "retry_offline", lambda out, root, ids: seen.append(root) or [])
    out = tmp_path / "out"
    for flags in (["--checkpoint-dir", "gs://bucket/x"], []):
        got = CliRunner().invoke(main, ["retry", "--all", "--out", str(out), *flags])
        assert got.exit_code == 0, got.output
    assert seen == ["gs://bucket/x", str(out / "checkpoints")]
