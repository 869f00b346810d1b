"""`--out` on an object store (`pool.store.mirror`): the driver's local copy, its pushes, the pull
that rebuilds it anywhere, and the lease that keeps a second driver out. Arrow's in-memory
filesystem stands for S3; each "driver" has its own local cache, as on two machines."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs
import pytest

from agents.errors import UsageError
from pool.store import mirror as m
from pool.store.files import ObjectFiles
from pool.store.location import resolve
from pool.store.mirror import OutMirror

URI = "s3://bucket/runs/a"


@pytest.fixture
def bucket() -> ObjectFiles:
    return ObjectFiles(pafs.FileSystem.from_uri("mock:///")[0])


def _driver(bucket: ObjectFiles, cache: Path, monkeypatch: pytest.MonkeyPatch,
            namespace: str = "selfheal-aaaa") -> OutMirror:
    monkeypatch.setenv("SELFHEAL_CACHE", str(cache))
    out = OutMirror(resolve(URI), bucket)
    out.acquire(namespace)
    return out


def _append(path: Path, *lines: str, end: str = "\n") -> None:
    with open(path, "a") as fh:
        fh.write("\n".join(lines) + end)


def test_what_was_pushed_is_pulled_whole_by_another_driver(bucket: ObjectFiles, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first = _driver(bucket, tmp_path / "a", monkeypatch)
    _append(first.local / "ledger.jsonl", '{"t": 1}', '{"t": 2}')
    assert first.push(force=True) == 18
    _append(first.local / "ledger.jsonl", '{"t": 3}')
    _append(first.local / "events.jsonl", '{"e": 1}')
    first.push(force=True)
    (first.local / "summary.json").write_text("{}")
    first.finish()
    first.release()
    assert bucket.names(first.root / "ledger.d") == ["000000000000.jsonl", "000000000001.jsonl"]

    second = _driver(bucket, tmp_path / "b", monkeypatch, "selfheal-bbbb")
    assert (tmp_path / "b") in second.local.parents
    assert (second.local / "ledger.jsonl").read_text() == '{"t": 1}\n{"t": 2}\n{"t": 3}\n'
    assert (second.local / "events.jsonl").read_text() == '{"e": 1}\n'
    assert (second.local / "summary.json").read_text() == "{}"
    assert second.stale is None, "a driver that ended released its lease"
    _append(second.local / "ledger.jsonl", '{"t": 4}')
    second.push(force=True)
    assert bucket.names(second.root / "ledger.d")[-1] == "000000000002.jsonl", "numbering goes on"


def test_a_line_still_being_written_waits_for_the_next_push(bucket: ObjectFiles, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = _driver(bucket, tmp_path, monkeypatch)
    _append(out.local / "ledger.jsonl", '{"t": 1}', '{"t": 2', end="")
    out.push(force=True)
    assert bucket.get(out.root / "ledger.d" / "000000000000.jsonl") == b'{"t": 1}\n'
    _append(out.local / "ledger.jsonl", "}")
    out.push(force=True)
    assert bucket.get(out.root / "ledger.d" / "000000000001.jsonl") == b'{"t": 2}\n'
    assert out.push(force=True) == 0, "nothing new, nothing sent"
    assert out.push() == 0, "and never more often than every PUSH_S unless forced"


def test_a_live_lease_keeps_a_second_driver_out_and_a_dead_ones_is_taken_over(
    bucket: ObjectFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _driver(bucket, tmp_path / "a", monkeypatch, "selfheal-dead")
    _append(first.local / "ledger.jsonl", '{"t": 1}')
    first.push(force=True)
    _append(first.local / "ledger.jsonl", '{"t": 2}')  # never pushed: the driver is killed here
    with pytest.raises(UsageError, match=f"--out {URI} is in use by a driver"):
        _driver(bucket, tmp_path / "b", monkeypatch)
    lease = json.loads(bucket.get(first.root / m.LEASE))
    bucket.put(first.root / m.LEASE, json.dumps({**lease, "ts": time.time() - m.LEASE_S - 1}).encode())
    second = _driver(bucket, tmp_path / "b", monkeypatch)
    assert second.stale is not None and second.stale["namespace"] == "selfheal-dead"
    assert (second.local / "ledger.jsonl").read_text() == '{"t": 1}\n', "the unpushed task reruns"


def test_the_same_machine_rebuilds_its_copy_from_the_uri(bucket: ObjectFiles, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy left by a driver that died here is not trusted past what it pushed: a rerun
    commits each task once, from the URI's ledger on."""
    first = _driver(bucket, tmp_path, monkeypatch)
    _append(first.local / "ledger.jsonl", '{"t": 1}')
    first.push(force=True)
    _append(first.local / "ledger.jsonl", '{"t": 2}')
    (first.local / "results.parquet").write_bytes(b"old")
    first.release()
    again = _driver(bucket, tmp_path, monkeypatch)
    assert again.local == first.local
    assert (again.local / "ledger.jsonl").read_text() == '{"t": 1}\n'
    assert not (again.local / "results.parquet").exists(), "the URI has none yet"


def test_a_run_cut_short_pushes_what_it_committed_and_frees_the_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.config import load_settings
    from pool.driver import batch
    from pool.store.location import Location

    fs = pafs.FileSystem.from_uri("mock:///")[0]
    monkeypatch.setattr(Location, "filesystem", lambda self: fs)
    monkeypatch.setenv("SELFHEAL_CACHE", str(tmp_path))

    def cut_short(opts: batch.RunOptions, *_: object) -> None:
        _append(opts.folder / "ledger.jsonl", '{"t": 1}')
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "_run_locked", cut_short)
    settings = load_settings(overrides={"engine": {"kind": "scripted"}})
    with pytest.raises(KeyboardInterrupt):
        batch.run_batch(batch.RunOptions(tasks=tmp_path / "t.jsonl", out="mock:///r", settings=settings))
    bucket = ObjectFiles(fs)
    assert bucket.get(PurePosixPath("r/ledger.d/000000000000.jsonl")) == b'{"t": 1}\n'
    assert not bucket.exists(PurePosixPath("r") / m.LEASE), "the next driver need not wait"


def test_a_lease_that_does_not_parse_is_taken_over_and_a_foreign_object_is_not_a_segment(
    bucket: ObjectFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = resolve(URI)
    base = PurePosixPath(root.path)
    bucket.make_dir(base / "ledger.d")
    bucket.put(base / m.LEASE, b'{"ts": "yesterday"}')
    bucket.put(base / "ledger.d" / "000000000000.jsonl", b'{"t": 1}\n')
    bucket.put(base / "ledger.d" / "notes.jsonl", b"not a segment\n")
    out = _driver(bucket, tmp_path, monkeypatch)
    assert out.stale is None, "no lease that parses: nothing to take down"
    assert (out.local / "ledger.jsonl").read_text() == '{"t": 1}\n'
    _append(out.local / "ledger.jsonl", '{"t": 2}')
    out.push(force=True)
    assert bucket.get(base / "ledger.d" / "000000000001.jsonl") == b'{"t": 2}\n'
    out.release()


def test_the_lease_is_kept_fresh_while_held_and_left_alone_once_released(
    bucket: ObjectFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver busy for longer than LEASE_S (registering a million agents) still holds it."""
    monkeypatch.setattr(m, "LEASE_S", 0.2)  # refreshed every 0.05 s
    out = _driver(bucket, tmp_path, monkeypatch)
    old = {**json.loads(bucket.get(out.root / m.LEASE)), "ts": 0.0}
    bucket.put(out.root / m.LEASE, json.dumps(old).encode())
    deadline = time.monotonic() + 10
    while json.loads(bucket.get(out.root / m.LEASE))["ts"] == 0.0:
        assert time.monotonic() < deadline, "the lease was never refreshed"
        time.sleep(0.01)
    out.release()
    assert not bucket.exists(out.root / m.LEASE)
    time.sleep(0.3)  # a refresher still running would write it back
    assert not bucket.exists(out.root / m.LEASE), "released: nothing refreshes it"


def test_a_refresh_under_way_when_the_lease_is_released_does_not_write_it_back(
    bucket: ObjectFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The refresher is inside its write when the driver releases: the release's delete must come
    # after that write, or the URI would look held by a driver that is gone for LEASE_S.
    monkeypatch.setattr(m, "LEASE_S", 0.2)  # refreshed every 0.05 s
    out = _driver(bucket, tmp_path, monkeypatch)
    writing, write = threading.Event(), out._write_lease

    def slow_write() -> None:
        writing.set()
        time.sleep(0.2)
        write()

    monkeypatch.setattr(out, "_write_lease", slow_write)
    assert writing.wait(10), "the lease was never refreshed"
    out.release()
    time.sleep(0.3)
    assert not bucket.exists(out.root / m.LEASE), "a refresh wrote the released lease back"
