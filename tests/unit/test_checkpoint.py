"""The codec and the durable checkpoint store: round trips, fencing, corruption, crashes, races."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agents.codec import SCHEMA, CheckpointUnreadable, Stamp, decode, encode, read_stamp
from agents.errors import CheckpointCorrupt, StaleEpoch, StorageError, UsageError
from agents.models import AgentRecord, AgentSpec, GenerationParams, Turn
from agents.state import AgentState
from pool.store.checkpoint import MANIFEST, STEPS, CheckpointStore

REPO = Path(__file__).resolve().parents[2]
AID = "agent-7"


def make(tasks_done: int = 0, agent_id: str = AID, **kw: object) -> AgentRecord:
    return AgentRecord(spec=AgentSpec(agent_id=agent_id), tasks_done=tasks_done, **kw)


RECORDS = {
    "plain": make(),
    "kv_state": make(kv_state=b"\x00\xff" * 5000),
    "empty_kv": make(kv_state=b""),
    "memory_unicode": AgentRecord(
        spec=AgentSpec(
            agent_id="a.b:c_d-1",
            system_prompt="Tu es un agent 🤖 — très bref.",
            priority=9,
            generation=GenerationParams(temperature=0.1, top_p=0.5, max_tokens=7, seed=2**40),
        ),
        state=AgentState.DEGRADED,
        memory=(
            Turn(role="user", content="¿Qué tal? 你好\n\t"),
            Turn(role="assistant", content=""),
        ),
        notes=("ノート", "", "x" * 3000),
        tasks_done=12,
        failed_reason="ünïcode reason",
    ),
}


def agent_folder(store: CheckpointStore, agent_id: str = AID) -> Path:
    return store._folder(agent_id)


def manifest_json(store: CheckpointStore, agent_id: str = AID) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((agent_folder(store, agent_id) / MANIFEST).read_text())
    return doc


def plant(store: CheckpointStore, data: bytes, agent_id: str = AID) -> None:
    """Replace the newest version's bytes with `data`, fixing size and sha256 in the manifest."""
    folder = agent_folder(store, agent_id)
    manifest = manifest_json(store, agent_id)
    newest = manifest["entries"][-1]
    (folder / newest["file"]).write_bytes(data)
    newest.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (folder / MANIFEST).write_text(json.dumps(manifest))


def with_version(data: bytes, version: bytes) -> bytes:
    metadata = {b"selfheal.schema_version": version}
    batch = next(iter(pa.ipc.open_stream(data))).replace_schema_metadata(metadata)
    return ipc(batch, schema=batch.schema)


def ipc(*batches: pa.RecordBatch, schema: pa.Schema = SCHEMA) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return bytes(sink.getvalue())


def one_batch(record: AgentRecord) -> pa.RecordBatch:
    return next(iter(pa.ipc.open_stream(encode(record))))


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "ckpt", keep=3)


# ---- codec ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_codec_round_trip(name: str) -> None:
    record = RECORDS[name]
    assert decode(encode(record)) == record


def test_codec_schema_is_versioned() -> None:
    schema = pa.ipc.open_stream(encode(make())).schema
    assert schema.metadata[b"selfheal.schema_version"] == b"1"
    assert schema.field("memory").type.value_type == pa.struct(
        [pa.field("role", pa.string(), False), pa.field("content", pa.string(), False)]
    )


def test_decode_rejects_other_schema_version() -> None:
    with pytest.raises(CheckpointCorrupt, match="schema version"):
        decode(with_version(encode(make()), b"2"))


def test_decode_rejects_two_rows_and_two_batches() -> None:
    batch = one_batch(make())
    with pytest.raises(CheckpointCorrupt, match="1 row"):
        decode(ipc(pa.concat_batches([batch, batch])))
    with pytest.raises(CheckpointCorrupt, match="1 batch"):
        decode(ipc(batch, batch))
    with pytest.raises(CheckpointCorrupt, match="1 batch"):
        decode(ipc())


def test_decode_rejects_other_columns() -> None:
    batch = one_batch(make()).drop_columns(["notes"])
    schema = batch.schema.with_metadata(SCHEMA.metadata)
    with pytest.raises(CheckpointCorrupt, match="does not match"):
        decode(ipc(batch.replace_schema_metadata(SCHEMA.metadata), schema=schema))


def test_decode_rejects_null_in_required_column() -> None:
    arrays = one_batch(make()).columns
    arrays[0] = pa.array([None], pa.string())
    batch = pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)
    with pytest.raises(CheckpointCorrupt, match="null"):
        decode(ipc(batch))


@pytest.mark.parametrize(
    ("column", "value", "type_"),
    [
        ("priority", 42, pa.int8()),
        ("agent_id", "no spaces allowed", pa.string()),
        ("state", "zombie", pa.string()),
        ("generation", '{"temperature": 9}', pa.string()),
        ("generation", "{not json", pa.string()),
        ("tasks_done", -1, pa.int64()),
    ],
)
def test_decode_rejects_invalid_values(column: str, value: object, type_: pa.DataType) -> None:
    # well-formed Arrow that the models refuse: unreadable by this version, not corrupt
    arrays = one_batch(make()).columns
    arrays[SCHEMA.get_field_index(column)] = pa.array([value], type_)
    with pytest.raises(CheckpointUnreadable, match="refused by this version's models") as info:
        decode(ipc(pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)))
    assert not isinstance(info.value, CheckpointCorrupt)


@pytest.mark.parametrize("data", [b"", b"not arrow at all", b"\xff" * 64, encode(make())[:-9]])
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(CheckpointCorrupt):
        decode(data)


VALID = encode(RECORDS["memory_unicode"])


@st.composite
def mutated(draw: st.DrawFn, valid: bytes = VALID) -> bytes:
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=4096), mutated()))
def test_decode_fuzz_raises_only_checkpoint_corrupt(data: bytes) -> None:
    try:
        record = decode(data)
    except (CheckpointCorrupt, CheckpointUnreadable):  # a flip can make a value the models refuse
        return
    assert isinstance(record, AgentRecord)  # a flip in padding or text can still be valid


# ---- store: round trips and versions --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_store_round_trip(store: CheckpointStore, name: str) -> None:
    record = RECORDS[name]
    entry = store.write(record, epoch=1)
    got, got_entry = store.read(record.spec.agent_id)
    assert got == record
    assert got_entry == entry
    assert (entry.version, entry.epoch, entry.file) == (1, 1, "v00000001.arrow")
    data, _ = store.read_bytes(record.spec.agent_id)
    assert decode(data) == record and len(data) == entry.size


def test_versions_increase_and_keep_k(store: CheckpointStore) -> None:
    entries = [store.write(make(tasks_done=i), epoch=1) for i in range(6)]
    assert [e.version for e in entries] == [1, 2, 3, 4, 5, 6]
    assert [e.version for e in store.versions(AID)] == [4, 5, 6]
    assert store.latest(AID) == entries[-1]
    files = sorted(p.name for p in agent_folder(store).glob("*.arrow"))
    assert files == ["v00000004.arrow", "v00000005.arrow", "v00000006.arrow"]
    assert store.read(AID)[0].tasks_done == 5


def test_layout_is_sharded(store: CheckpointStore) -> None:
    ids = [f"agent-{i}" for i in range(40)]
    for agent_id in ids:
        store.write(make(agent_id=agent_id), epoch=0)
    shards = {p.parent.name for p in (store.root / "agents").glob("*/*")}
    assert len(shards) > 10 and all(len(s) == 2 for s in shards)
    assert sorted(store.agent_ids()) == sorted(ids)
    assert all(store.exists(a) for a in ids)


def test_missing_agent(store: CheckpointStore) -> None:
    assert not store.exists(AID)
    assert store.latest(AID) is None and store.versions(AID) == []
    assert list(store.agent_ids()) == []
    for call in (store.read, store.read_bytes, store.verify):
        with pytest.raises(StorageError, match="no checkpoint for agent agent-7") as info:
            call(AID)
        assert not isinstance(info.value, CheckpointCorrupt)


@pytest.mark.parametrize("bad", ["", "..", ".", "a/b", "../x", "x" * 129, "sp ace"])
def test_invalid_agent_id_is_usage_error(store: CheckpointStore, bad: str) -> None:
    with pytest.raises(UsageError):
        store.read(bad)
    with pytest.raises(UsageError):
        store.write_bytes(bad, encode(make()), epoch=1)


def test_write_bytes_refuses_bad_or_foreign_bytes(store: CheckpointStore) -> None:
    with pytest.raises(CheckpointCorrupt):
        store.write_bytes(AID, b"garbage", epoch=1)
    with pytest.raises(CheckpointCorrupt, match="holds agent other"):
        store.write_bytes(AID, encode(make(agent_id="other")), epoch=1)
    assert not store.exists(AID)
    entry = store.write_bytes(AID, encode(make(tasks_done=3)), epoch=1)
    assert store.read(AID) == (make(tasks_done=3), entry)


# ---- epochs ---------------------------------------------------------------------------------


def test_stale_epoch_rejected_and_nothing_changes(store: CheckpointStore) -> None:
    store.write(make(tasks_done=1), epoch=2)
    store.write(make(tasks_done=2), epoch=2)  # an equal epoch is the same Host: allowed
    before = {p.name: p.read_bytes() for p in agent_folder(store).iterdir()}
    with pytest.raises(StaleEpoch, match="epoch 1 refused, epoch 2 committed"):
        store.write(make(tasks_done=99), epoch=1)
    assert {p.name: p.read_bytes() for p in agent_folder(store).iterdir()} == before
    assert store.read(AID)[0].tasks_done == 2
    assert store.write(make(tasks_done=3), epoch=3).version == 3


def test_bad_epoch_is_usage_error(store: CheckpointStore) -> None:
    with pytest.raises(UsageError):
        store.write(make(), epoch=-1)


# ---- corruption -----------------------------------------------------------------------------


def _truncate(store: CheckpointStore) -> None:
    path = agent_folder(store) / "v00000002.arrow"
    path.write_bytes(path.read_bytes()[:100])


def _zero(store: CheckpointStore) -> None:
    (agent_folder(store) / "v00000002.arrow").write_bytes(b"")


def _flip(store: CheckpointStore) -> None:
    path = agent_folder(store) / "v00000002.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _delete(store: CheckpointStore) -> None:
    (agent_folder(store) / "v00000002.arrow").unlink()


def _wrong_version(store: CheckpointStore) -> None:
    plant(store, with_version(encode(make(tasks_done=2)), b"2"))


def _other_agent(store: CheckpointStore) -> None:
    plant(store, encode(make(agent_id="someone-else")))


CORRUPTIONS = [_truncate, _zero, _flip, _delete, _wrong_version, _other_agent]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corrupt_newest_is_quarantined_and_previous_returned(
    store: CheckpointStore, corrupt: Callable[[CheckpointStore], None]
) -> None:
    store.write(make(tasks_done=1), epoch=1)
    store.write(make(tasks_done=2), epoch=1)
    corrupt(store)
    record, entry = store.read(AID)
    assert (record.tasks_done, entry.version) == (1, 1)
    assert [e.version for e in store.versions(AID)] == [1]
    reasons = list((store.root / "quarantine" / AID).glob("*.reason.json"))
    assert len(reasons) == 1 and json.loads(reasons[0].read_text())["version"] == 2
    assert not (agent_folder(store) / "v00000002.arrow").exists()
    assert store.write(make(tasks_done=3), epoch=1).version == 3  # never reuses version 2
    assert store.read(AID)[0].tasks_done == 3


def test_all_versions_corrupt(store: CheckpointStore) -> None:
    for i in range(3):
        store.write(make(tasks_done=i), epoch=1)
    for path in agent_folder(store).glob("*.arrow"):
        path.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointCorrupt, match="no version verifies"):
        store.read(AID)
    with pytest.raises(CheckpointCorrupt):
        store.verify(AID)
    assert len(list((store.root / "quarantine" / AID).glob("*.arrow.*[0-9]"))) == 3
    assert store.write(make(tasks_done=7), epoch=1).version == 4
    assert store.read(AID)[0].tasks_done == 7


def test_quarantine_whole_agent(store: CheckpointStore) -> None:
    store.write(make(tasks_done=1), epoch=1)
    store.write(make(tasks_done=2), epoch=1)
    store.quarantine(AID, "operator says so")
    assert store.exists(AID) and store.versions(AID) == []
    with pytest.raises(CheckpointCorrupt, match="operator says so"):
        store.read(AID)
    assert list(agent_folder(store).glob("*.arrow")) == []
    assert len(list((store.root / "quarantine" / AID).glob("*.reason.json"))) == 2
    with pytest.raises(StorageError, match="no checkpoint"):
        store.quarantine("nobody", "x")
    assert store.write(make(tasks_done=3), epoch=1).version == 3  # a new write releases it
    assert store.read(AID)[0].tasks_done == 3


def test_temp_files_never_read_and_cleaned(store: CheckpointStore) -> None:
    store.write(make(tasks_done=1), epoch=1)
    folder = agent_folder(store)
    (folder / "v00000002.arrow.999.tmp").write_bytes(encode(make(tasks_done=50)))
    (folder / f"{MANIFEST}.999.tmp").write_bytes(b"{}")
    assert store.read(AID)[0].tasks_done == 1
    store.write(make(tasks_done=2), epoch=1)
    assert list(folder.glob("*.tmp")) == []


# ---- out of space -------------------------------------------------------------------------


@pytest.mark.parametrize("fail_call", [1, 2], ids=["data", "manifest"])
def test_enospc_raises_storage_error_and_keeps_previous(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch, fail_call: int
) -> None:
    store.write(make(tasks_done=1), epoch=1)
    real_write, calls = os.write, []

    def full_disk(fd: int, data: bytes) -> int:
        calls.append(fd)
        if len(calls) >= fail_call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(StorageError, match="No space left on device"):
        store.write(make(tasks_done=2), epoch=1)
    monkeypatch.undo()
    assert store.read(AID)[0].tasks_done == 1
    assert [e.version for e in store.versions(AID)] == [1]
    assert list(agent_folder(store).glob("*.tmp")) == []
    assert store.write(make(tasks_done=3), epoch=1).version == 2
    assert store.read(AID)[0].tasks_done == 3


def test_enospc_with_bare_errno(store: CheckpointStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(StorageError, match="No space left on device"):
        store.write(make(), epoch=1)


# ---- crashes and other processes ----------------------------------------------------------

CHILD = """
import os, signal, sys
from pathlib import Path
from agents.errors import StaleEpoch
from agents.models import AgentRecord, AgentSpec
from pool.store.checkpoint import CheckpointStore

root, step, epoch, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def hook(at):
    if at == step:
        os.kill(os.getpid(), signal.SIGKILL)

store = CheckpointStore(root, keep=3, fault_hook=hook)
for i in range(count):
    record = AgentRecord(spec=AgentSpec(agent_id="agent-7"), tasks_done=100 * epoch + i)
    try:
        entry = store.write(record, epoch=epoch)
    except StaleEpoch:
        print("stale", flush=True)
    else:
        print("ok", entry.version, entry.epoch, flush=True)
"""


def spawn(root: Path, step: str = "-", epoch: int = 1, count: int = 1) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", CHILD, str(root), step, str(epoch), str(count)]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_each_step(store: CheckpointStore, step: str) -> None:
    store.write(make(tasks_done=1), epoch=1)
    child = spawn(store.root, step, epoch=1)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    record, entry = store.read(AID)
    committed = step == "manifest_written"
    assert (entry.version, record.tasks_done) == ((2, 100) if committed else (1, 1))
    following = store.write(make(tasks_done=5), epoch=1)
    assert following.version == entry.version + 1
    assert store.read(AID)[0].tasks_done == 5
    folder = agent_folder(store)
    assert list(folder.glob("*.tmp")) == []
    listed = {e.file for e in store.versions(AID)}
    assert {p.name for p in folder.glob("*.arrow")} == listed


def test_two_processes_epoch_fencing(store: CheckpointStore) -> None:
    store.write(make(), epoch=0)
    old, new = spawn(store.root, epoch=1, count=30), spawn(store.root, epoch=2, count=30)
    (out1, err1), (out2, err2) = old.communicate(timeout=120), new.communicate(timeout=120)
    outs = {1: out1, 2: out2}
    # A child imports the working tree when it starts: say why it died (a module another
    # engineer was editing, say), not only that it did.
    assert old.returncode == new.returncode == 0, (old.returncode, err1[-2000:], new.returncode,
                                                   err2[-2000:])
    oks = {
        e: [line.split() for line in out.splitlines() if line.startswith("ok")]
        for e, out in outs.items()
    }
    assert len(oks[2]) == 30  # the newer Host is never refused
    first_new = min(int(v) for _, v, _ in oks[2])
    assert all(int(v) < first_new for _, v, _ in oks[1])  # no old write after the first new one
    assert len(oks[1]) + outs[1].count("stale") == 30
    versions = [int(v) for _, v, _ in oks[1] + oks[2]]
    assert len(set(versions)) == len(versions) == len(oks[1]) + 30
    late = spawn(store.root, epoch=1)
    out, err = late.communicate(timeout=60)
    assert out.strip() == "stale", (out, err[-2000:])
    assert store.latest(AID).epoch == 2  # type: ignore[union-attr]
    assert store.read(AID)[0].tasks_done == 229


# ---- fuzzing a read -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding versions 1 and 2, copied by each fuzz example (no fsyncs per example)."""
    root = tmp_path_factory.mktemp("template")
    store = CheckpointStore(root)
    store.write(make(tasks_done=1), epoch=1)
    store.write(make(tasks_done=2), epoch=1)
    return root


@settings(max_examples=150, deadline=None)
@given(data=st.one_of(st.binary(max_size=2048), mutated(encode(make(tasks_done=2)))))
def test_read_fuzz_newest_file(two_versions: Path, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(shutil.copytree(two_versions, Path(tmp) / "ckpt"))
        plant(store, data)
        try:
            record, entry = store.read(AID)
        except CheckpointUnreadable:  # well-formed bytes the models refuse: kept, not quarantined
            with pytest.raises(CheckpointUnreadable):
                decode(data)
            return
        except StorageError:  # CheckpointCorrupt included: the project's own typed errors
            pytest.fail("version 1 is intact: the read must fall back to it")
        if entry.version == 2:
            assert record == decode(data) and record.spec.agent_id == AID
        else:
            assert (entry.version, record.tasks_done) == (1, 1)


# ---- epochs after a quarantine ------------------------------------------------------------


def test_next_epoch_is_above_the_fence_after_the_newest_version_is_quarantined(
    store: CheckpointStore,
) -> None:
    store.write(make(tasks_done=1), epoch=1)
    store.write(make(tasks_done=2), epoch=4)  # a fence: the watchdog moved the agent on
    _flip(store)  # version 2, the only one at epoch 4, goes bad
    assert store.read(AID)[0].tasks_done == 1  # quarantined on the way
    assert store.latest(AID).epoch == 1  # type: ignore[union-attr]
    with pytest.raises(StaleEpoch):  # what the newest remaining entry suggested before
        store.write(make(tasks_done=3), epoch=store.latest(AID).epoch + 1)  # type: ignore[union-attr]
    assert store.next_epoch(AID) == 5
    assert store.next_epoch(AID, after=7) == 8  # a manager that already gave out 7
    assert store.write(make(tasks_done=3), epoch=store.next_epoch(AID)).epoch == 5
    assert store.next_epoch("nobody") == 1


# ---- quarantine only what is corrupt ------------------------------------------------------


def _too_long_prompt() -> AgentRecord:
    """A record an older version allowed (a longer persona) that this version's limits refuse."""
    spec = AgentSpec.model_construct(agent_id=AID, system_prompt="x" * 5000, priority=5,
                                     generation=GenerationParams())
    return AgentRecord.model_construct(spec=spec, state=AgentState.DORMANT, memory=(), notes=(),
                                       kv_state=None, tasks_done=2, failed_reason=None)


def _nothing_moved(store: CheckpointStore, files: set[str]) -> None:
    assert {p.name for p in agent_folder(store).glob("*.arrow")} == files
    assert [e.file for e in store.versions(AID)] == sorted(files)
    assert not (store.root / "quarantine").exists()


def test_a_record_refused_by_tightened_limits_is_kept_not_quarantined(
    store: CheckpointStore,
) -> None:
    store.write(make(tasks_done=1), epoch=1)
    store.write(_too_long_prompt(), epoch=1)  # what the older version committed
    for call in (store.read, store.read_bytes, store.verify):
        with pytest.raises(CheckpointUnreadable, match="system_prompt") as info:
            call(AID)
        assert not isinstance(info.value, CheckpointCorrupt)
    _nothing_moved(store, {"v00000001.arrow", "v00000002.arrow"})


def test_out_of_memory_while_decoding_is_retryable_not_corruption(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write(make(tasks_done=1), epoch=1)

    def no_memory(*_: object, **__: object) -> object:
        raise pa.ArrowMemoryError("malloc of size 1048576 failed")

    monkeypatch.setattr(pa.ipc, "open_stream", no_memory)
    with pytest.raises(CheckpointUnreadable, match="memory"):
        store.read(AID)
    monkeypatch.undo()
    _nothing_moved(store, {"v00000001.arrow"})
    assert store.read(AID)[0].tasks_done == 1  # once memory is back, the same file reads


def test_a_transient_read_error_is_retryable_not_corruption(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write(make(tasks_done=1), epoch=1)
    real = Path.read_bytes

    def flaky(self: Path) -> bytes:
        if self.suffix == ".arrow":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", flaky)
    with pytest.raises(StorageError, match="Input/output error") as info:
        store.read(AID)
    assert not isinstance(info.value, CheckpointCorrupt)
    monkeypatch.undo()
    _nothing_moved(store, {"v00000001.arrow"})


# ---- a corrupt manifest is rebuilt from the version files ---------------------------------


def test_version_files_carry_their_agent_version_and_epoch(store: CheckpointStore) -> None:
    store.write(make(), epoch=3)
    entry = store.write_bytes(AID, encode(make(tasks_done=1)), epoch=4)
    data = (agent_folder(store) / entry.file).read_bytes()
    assert read_stamp(data) == Stamp(AID, 2, 4)
    assert read_stamp(encode(make())) is None  # a hot-tier copy is not a committed version
    assert decode(data) == make(tasks_done=1)


def test_a_file_stamped_for_another_version_is_corrupt(store: CheckpointStore) -> None:
    store.write(make(tasks_done=1), epoch=1)
    store.write(make(tasks_done=2), epoch=1)
    plant(store, (agent_folder(store) / "v00000001.arrow").read_bytes())  # v1's file as v2
    record, entry = store.read(AID)
    assert (entry.version, record.tasks_done) == (1, 1)
    [note] = (store.root / "quarantine" / AID).glob("*.reason.json")
    assert "stamped" in json.loads(note.read_text())["reason"]


@pytest.mark.parametrize(
    "manifest",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"agent_id": "agent-7"}',
        "MANIFEST_WITH_ESCAPING_FILE",
        "MANIFEST_OF_OTHER_AGENT",
        "MANIFEST_FENCE_BELOW_ENTRIES",
    ],
)
def test_corrupt_manifest_is_rebuilt_from_the_version_files(
    store: CheckpointStore, manifest: bytes | str
) -> None:
    for i, epoch in enumerate((1, 2, 5, 7), 1):
        store.write(make(tasks_done=i), epoch=epoch)
    _flip_version(store, 4)
    assert store.read(AID)[1].version == 3  # v4 (the only one at epoch 7) is quarantined
    path = agent_folder(store) / MANIFEST
    if isinstance(manifest, str):
        doc = json.loads(path.read_text())
        if manifest == "MANIFEST_WITH_ESCAPING_FILE":
            doc["entries"][0]["file"] = "../../../../etc/passwd"
        elif manifest == "MANIFEST_OF_OTHER_AGENT":
            doc["agent_id"] = "other"
        else:
            doc["epoch"] = 0
        manifest = json.dumps(doc).encode()
    path.write_bytes(manifest)
    with capture_logs() as logs:
        record, entry = store.read(AID)
    assert (record.tasks_done, entry.version, entry.epoch) == (3, 3, 5)
    assert [e.version for e in store.versions(AID)] == [2, 3]  # v1 was pruned (keep=3) before
    assert any(e["event"] == "checkpoint.manifest_rebuilt" for e in logs)
    assert store.next_epoch(AID) == 8, "the quarantined v4's epoch 7 is still the fence"
    with pytest.raises(StaleEpoch):
        store.write(make(tasks_done=99), epoch=6)
    assert store.write(make(tasks_done=5), epoch=8).version == 5  # version 4 is never reused
    bad = [p for p in (store.root / "quarantine" / AID).iterdir() if p.name.startswith(MANIFEST)]
    assert len(bad) == 2  # the bad manifest and its reason note


def test_a_corrupt_manifest_is_rebuilt_by_a_write_too(store: CheckpointStore) -> None:
    store.write(make(tasks_done=1), epoch=2)
    (agent_folder(store) / MANIFEST).write_bytes(b"\x00garbage")
    with pytest.raises(StaleEpoch):
        store.write(make(tasks_done=9), epoch=1)
    assert store.write(make(tasks_done=2), epoch=2).version == 2
    assert store.read(AID)[0].tasks_done == 2


def _flip_version(store: CheckpointStore, version: int) -> None:
    path = agent_folder(store) / f"v{version:08d}.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# ---- the chaos check says what it saw -------------------------------------------------------


def test_check_checkpoints_reports_a_fallback_to_an_older_version(store: CheckpointStore) -> None:
    from pool.ops.checks import check_checkpoints

    store.write(make(tasks_done=1), epoch=1)
    store.write(make(tasks_done=2), epoch=1)
    store.write(make(agent_id="fine"), epoch=1)
    _flip(store)  # v2 of agent-7: the newest committed version is corrupt
    check = check_checkpoints(store.root)
    assert not check.ok, "the newest committed version did not verify"
    assert "agent-7: newest version 2 corrupt (quarantined: sha256 mismatch); fell back to " \
           "version 1" in check.detail
    assert check.figures["fell_back"] == {AID: 1} and check.figures["verified"] == 1
    again = check_checkpoints(store.root)  # v1 is the newest now: it verifies, v2 is listed
    assert again.ok and again.figures["quarantined_earlier"] == {AID: [2]}
    assert "1 with versions quarantined earlier (agent-7: [2])" in again.detail
    store.write(make(tasks_done=3), epoch=1)
    _flip_version(store, 3)
    allowed = check_checkpoints(store.root, quarantined_ok=[AID])
    assert allowed.ok and allowed.figures["quarantined"] == [AID] and allowed.figures["verified"] == 1


def test_check_checkpoints_passes_a_clean_store(store: CheckpointStore) -> None:
    from pool.ops.checks import check_checkpoints

    store.write(make(tasks_done=1), epoch=1)
    store.write(make(tasks_done=2), epoch=1)
    check = check_checkpoints(store.root)
    assert check.ok and check.detail == "1 verified, 0 quarantined as expected, 0 bad"
