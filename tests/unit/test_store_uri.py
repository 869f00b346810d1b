"""Storage by URI: a path or file:// stays on the POSIX store; s3://, gs:// and mock:// go
through `pyarrow.fs`. The object-store path is tested on Arrow's in-memory mock filesystem and on
a SubTreeFileSystem: no network."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs
import pytest

from agents.codec import encode
from agents.errors import CheckpointCorrupt, StaleEpoch, UsageError
from agents.models import AgentRecord, AgentSpec
from pool.store.agent_table import AgentTable
from pool.store.checkpoint import MANIFEST, CheckpointStore
from pool.store.deadletters import DeadLetterTable
from pool.store.location import resolve

AID = "agent-1"


def make(done: int = 0, agent_id: str = AID) -> AgentRecord:
    return AgentRecord(spec=AgentSpec(agent_id=agent_id), tasks_done=done)


# ---- resolution (pure: no filesystem is opened) ---------------------------------------------


@pytest.mark.parametrize(("uri", "path"), [
    ("checkpoints", "checkpoints"), ("/mnt/selfheal", "/mnt/selfheal"),
    ("file:///mnt/selfheal", "/mnt/selfheal"), ("file://localhost/mnt/s%20h", "/mnt/s h"),
])
def test_a_path_or_file_uri_is_local(uri: str, path: str) -> None:
    loc = resolve(uri)
    assert loc.is_local and loc.path == path and loc.local_path() == Path(path)


@pytest.mark.parametrize(("uri", "scheme", "path"), [
    ("s3://bucket/selfheal", "s3", "bucket/selfheal"), ("s3://bucket", "s3", "bucket"),
    ("gs://bucket/a/b/", "gs", "bucket/a/b"), ("gcs://bucket/a", "gs", "bucket/a"),
    ("mock:///selfheal", "mock", "selfheal"),
])
def test_an_object_store_uri_is_not_local(uri: str, scheme: str, path: str) -> None:
    loc = resolve(uri)  # no network: S3's region is only asked when the filesystem is opened
    assert not loc.is_local and (loc.scheme, loc.path, loc.uri) == (scheme, path, uri)
    with pytest.raises(UsageError, match=f"needs a local path or file:// URI, not {uri}"):
        loc.local_path("the --out lock")


@pytest.mark.parametrize(("uri", "why"), [
    ("ftp://host/x", "scheme 'ftp' is not supported"), ("s3:///x", "no bucket"),
    ("file://elsewhere/x", "names this machine's disk"), ("  ", "empty"),
    (Path("s3://bucket/x"), "a URI made into a Path"),
    (Path("/out") / Path("gs://bucket/x"), "a URI made into a Path"),  # OUT / checkpoint_dir
])
def test_what_the_store_cannot_use_is_a_usage_error(uri: str | Path, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        resolve(uri)


def test_a_file_uri_store_is_todays_posix_store(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}/ckpt")
    store.write(make(1), epoch=1)
    folder = store._folder(AID)
    assert store.files.is_local and isinstance(folder, Path)
    assert (folder / ".lock").exists()  # flock, as on a plain path
    assert CheckpointStore(tmp_path / "ckpt").read(AID)[0].tasks_done == 1


# ---- the store on a pyarrow filesystem -------------------------------------------------------


@pytest.fixture(params=["mock", "subtree"])
def fs(request: pytest.FixtureRequest, tmp_path: Path) -> pafs.FileSystem:
    if request.param == "mock":
        return pafs.FileSystem.from_uri("mock:///")[0]
    return pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())


def test_commits_and_reads_through_the_filesystem(fs: pafs.FileSystem) -> None:
    store = CheckpointStore("selfheal", keep=2, filesystem=fs)
    assert not store.files.is_local
    for done in (1, 2, 3):
        store.write(make(done), epoch=1)
    again = CheckpointStore("selfheal", keep=2, filesystem=fs)  # another node, same store
    assert again.read(AID)[0].tasks_done == 3
    assert [e.version for e in again.versions(AID)] == [2, 3]
    assert again.exists(AID) and list(again.agent_ids()) == [AID]
    names = again.files.names(PurePosixPath(str(store._folder(AID))))
    assert names == [MANIFEST, "v00000002.arrow", "v00000003.arrow"]  # pruned; no lock, no temp
    with pytest.raises(StaleEpoch):
        again.write(make(9), epoch=0)
    assert again.next_epoch(AID) == 2


def test_a_corrupt_version_is_quarantined_and_the_previous_read(fs: pafs.FileSystem) -> None:
    store = CheckpointStore("s", filesystem=fs)
    store.write(make(1), epoch=1)
    entry = store.write(make(2), epoch=1)
    newest = store._folder(AID) / entry.file
    store.files.put(newest, store.files.get(newest)[:-10])
    assert store.read(AID)[0].tasks_done == 1
    assert [n["version"] for n in store.quarantined_versions(AID)] == [2]
    assert store.write(make(3), epoch=1).version == 3  # versions never run backwards


def test_a_corrupt_manifest_is_rebuilt(fs: pafs.FileSystem) -> None:
    store = CheckpointStore("s", filesystem=fs)
    store.write(make(1), epoch=4)
    store.files.put(store._folder(AID) / MANIFEST, b"{not json")
    assert store.read(AID)[0].tasks_done == 1 and store.next_epoch(AID) == 5


def test_initial_writes_meta_and_agent_quarantine(fs: pafs.FileSystem) -> None:
    store = CheckpointStore("s", filesystem=fs)
    store.write(make(5, "b"), epoch=1)
    assert store.write_initial_many([make(0, "a"), make(0, "b")]) == 1
    assert store.read("b")[0].tasks_done == 5 and store.read("a")[1].version == 1
    store.put_meta("PAUSED", b"{}")
    assert store.get_meta("PAUSED") == b"{}"
    store.delete_meta("PAUSED")
    assert store.get_meta("PAUSED") is None
    store.quarantine("a", "by hand")
    with pytest.raises(CheckpointCorrupt, match="quarantined"):
        store.read("a")


def test_write_bytes_and_read_bytes_round_trip(fs: pafs.FileSystem) -> None:
    store = CheckpointStore("s", filesystem=fs)
    entry = store.write_bytes(AID, encode(make(7)), epoch=2)
    data, got = store.read_bytes(AID)
    assert got == entry and json.loads(store.files.get(store._folder(AID) / MANIFEST))["epoch"] == 2
    assert len(data) == entry.size


def test_a_mock_uri_opens_an_object_store() -> None:
    store = CheckpointStore("mock:///selfheal")
    store.write(make(1), epoch=1)
    assert not store.files.is_local and store.read(AID)[0].tasks_done == 1


# ---- the agent table and the dead letters on an object store --------------------------------


def test_the_agent_table_commits_reads_and_compacts_on_an_object_store(
    fs: pafs.FileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pool.store import agent_table

    monkeypatch.setattr(agent_table, "COMPACT_AT", 2)
    for n in range(3):
        AgentTable("s", filesystem=fs).append([(f"a{n}", n, ""), ("a0", 9, "later")])
    table = AgentTable("s", filesystem=fs)
    assert len(table.files()) == 3
    assert list(table.load()) == [("a0", 0, ""), ("a1", 1, ""), ("a2", 2, "")]
    assert len(table.files()) == 1  # compacted
    table.io.put(table.folder / "agents-00000000000000000000-1.parquet", b"not parquet")
    assert [r[0] for r in AgentTable("s", filesystem=fs).read()] == ["a0", "a1", "a2"]
    assert table.io.names(table.folder / "quarantine") == ["agents-00000000000000000000-1.parquet"]


def test_dead_letters_append_and_read_back_in_order_on_an_object_store(fs: pafs.FileSystem) -> None:
    first = DeadLetterTable("s", filesystem=fs)
    assert first.read() == []
    assert first.append([{"kind": "dead_letter", "n": 1}]) and first.append([{"n": 2}, {"n": 3}])
    assert [r["n"] for r in DeadLetterTable("s", filesystem=fs).read()] == [1, 2, 3]


def test_the_tables_take_a_uri_string_for_a_local_store(tmp_path: Path) -> None:
    assert DeadLetterTable(f"file://{tmp_path}").path == tmp_path / "dead_letters.jsonl"
    assert AgentTable(str(tmp_path)).folder == tmp_path / "registry"
    with pytest.raises(UsageError, match="a URI made into a Path"):
        DeadLetterTable(Path("s3://bucket/selfheal"))


def test_the_result_journal_of_out_refuses_an_object_store(tmp_path: Path) -> None:
    from pool.store.journal import ResultJournal

    with pytest.raises(UsageError, match="--out needs a local path or file:// URI, not s3://b/r"):
        ResultJournal("s3://b/r/ledger.jsonl")
    with pytest.raises(UsageError, match="a URI made into a Path"):
        ResultJournal(Path("gs://b/r/ledger.jsonl"))
    assert ResultJournal(f"file://{tmp_path}/ledger.jsonl").path == tmp_path / "ledger.jsonl"
