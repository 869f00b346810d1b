"""The durable checkpoint store: round trips, fencing, corruption, crashes, races (the codec is in
test_codec.py, quarantine and manifest rebuilds in test_checkpoint_recovery.py)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from checkpoint_data import AID, RECORDS, agent_folder, flip_newest, make, mutated, plant, with_version
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.codec import CheckpointUnreadable, decode, encode
from agents.errors import CheckpointCorrupt, StaleEpoch, StorageError, UsageError
from pool.store.checkpoint import MANIFEST, STEPS, CheckpointStore

REPO = Path(__file__).resolve().parents[2]


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


def _delete(store: CheckpointStore) -> None:
    (agent_folder(store) / "v00000002.arrow").unlink()


def _wrong_version(store: CheckpointStore) -> None:
    plant(store, with_version(encode(make(tasks_done=2)), b"2"))


def _other_agent(store: CheckpointStore) -> None:
    plant(store, encode(make(agent_id="someone-else")))


CORRUPTIONS = [_truncate, _zero, flip_newest, _delete, _wrong_version, _other_agent]


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
    flip_newest(store)  # version 2, the only one at epoch 4, goes bad
    assert store.read(AID)[0].tasks_done == 1  # quarantined on the way
    assert store.latest(AID).epoch == 1  # type: ignore[union-attr]
    with pytest.raises(StaleEpoch):  # what the newest remaining entry suggested before
        store.write(make(tasks_done=3), epoch=store.latest(AID).epoch + 1)  # type: ignore[union-attr]
    assert store.next_epoch(AID) == 5
    assert store.next_epoch(AID, after=7) == 8  # a manager that already gave out 7
    assert store.write(make(tasks_done=3), epoch=store.next_epoch(AID)).epoch == 5
    assert store.next_epoch("nobody") == 1


