"""The llama.cpp engine's KV snapshots: the format, references, and the copies an engine keeps."""

from __future__ import annotations

import os
from pathlib import Path

from agents.engines.snapshot import KeptSnapshots, engine_folder, new_id, pack, parse, pid_space, reference

TAG = b"model.gguf:123"


def test_a_snapshot_round_trips_and_a_foreign_or_torn_one_is_refused() -> None:
    sid = new_id()
    blob = pack(sid, True, TAG, b"slot file")
    snap = parse(blob, TAG)
    assert snap is not None and (snap.sid, snap.kept, bytes(snap.data)) == (sid, True, b"slot file")
    assert parse(blob, b"other.gguf:123") is None  # another model's
    assert parse(blob[:10], TAG) is None
    assert parse(b"SHKV\x02\x00" + blob[6:], TAG) is None  # another format version


def test_a_reference_names_a_kept_snapshot_without_its_bytes() -> None:
    sid = new_id()
    blob = pack(sid, True, TAG, b"x" * 1000)
    ref = reference(blob)
    assert ref is not None and len(ref) < 64
    snap = parse(ref, TAG)
    assert snap is not None and snap.sid == sid and not snap.data
    assert reference(pack(sid, False, TAG, b"x" * 1000)) is None  # the engine keeps no copy
    assert reference(ref) is None  # a reference is not a whole snapshot
    assert reference(b"not a snapshot") is None


def test_kept_snapshots_stay_under_their_limit_least_recently_used_first(tmp_path: Path) -> None:
    kept = KeptSnapshots(tmp_path, limit_bytes=250)
    ids = [new_id() for _ in range(4)]

    def save(sid: str, size: int) -> bool:
        (tmp_path / kept.name(sid)).write_bytes(b"k" * size)
        return kept.add(sid, size)

    assert save(ids[0], 100) and save(ids[1], 100)
    assert kept.take(ids[0]) == kept.name(ids[0])  # now the most recently used
    assert save(ids[2], 100)  # over 250: ids[1] goes, not ids[0]
    assert kept.take(ids[1]) is None and not (tmp_path / kept.name(ids[1])).exists()
    assert kept.take(ids[0]) and kept.take(ids[2])
    assert not save(ids[3], 300)  # alone over the limit: not kept, file gone, nothing evicted
    assert not (tmp_path / kept.name(ids[3])).exists()
    assert kept.figures() == {"kept_snapshots": 2, "kept_bytes": 200}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept.name(i) for i in ids[::2])


def test_an_engine_folder_left_by_a_dead_engine_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    here = pid_space()
    dead = tmp_path / f"selfheal-slots-{here}-{gone}-abc"
    dead.mkdir()
    (dead / "kept-1.bin").write_bytes(b"k" * 100)
    live = tmp_path / f"selfheal-slots-{here}-{os.getppid()}-def"
    live.mkdir()
    # the same pid number in another pid namespace (a container sharing this temp folder) is
    # another process, whose liveness cannot be seen from here: its folder stays
    other = tmp_path / f"selfheal-slots-{'0' * len(here)}-{gone}-ghi"
    other.mkdir()
    mine = engine_folder(str(tmp_path))
    assert not dead.exists() and live.exists() and other.exists()
    assert mine.name.startswith(f"selfheal-slots-{here}-{os.getpid()}-")
    assert mine.stat().st_mode & 0o777 == 0o700
