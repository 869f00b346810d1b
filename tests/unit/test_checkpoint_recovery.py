"""The checkpoint store quarantines only what is corrupt, rebuilds a corrupt manifest from its
version files, and the chaos check says what it saw."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest
from checkpoint_data import AID, agent_folder, flip_newest, make, plant
from structlog.testing import capture_logs

from agents.codec import CheckpointUnreadable, Stamp, decode, encode, read_stamp
from agents.errors import CheckpointCorrupt, StaleEpoch, StorageError
from agents.models import AgentRecord, AgentSpec, GenerationParams
from agents.state import AgentState
from pool.store.checkpoint import MANIFEST, CheckpointStore

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
    flip_newest(store)  # v2 of agent-7: the newest committed version is corrupt
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
