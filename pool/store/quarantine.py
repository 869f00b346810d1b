"""Where the checkpoint store puts what fails verification, and how a lost manifest comes back.

Theory of operation. A version file that fails its checks is moved to `root/quarantine/<agent>/`
under a unique name, beside a `*.reason.json` note that keeps its version, epoch and why; a bad
manifest is copied there (copied, not moved: a crash leaves the original in place to be looked at
again). The notes are what keeps a rebuilt manifest's fence and version counter from running
backwards: `rebuild_manifest` lists the version files of the agent's folder that verify, and takes
the highest epoch and version of those and of every noted one. The caller holds the agent's lock
(`pool.store.checkpoint`); these functions only do the I/O of that decision.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import PurePath
from typing import Any, Final

import structlog

from agents.errors import CheckpointCorrupt
from pool.store import manifest as mf
from pool.store.files import Files
from pool.store.manifest import MANIFEST, Manifest, ManifestEntry

FOLDER: Final = "quarantine"

log = structlog.get_logger(__name__)


def folder_of(files: Files, root: PurePath, agent_id: str) -> PurePath:
    target = root / FOLDER / agent_id
    files.make_dir(target)
    return target


def quarantine_file(files: Files, root: PurePath, folder: PurePath, entry: ManifestEntry,
                    reason: str) -> None:
    """Move the entry's version file out of `folder` (if it is still there) and note why."""
    target = folder_of(files, root, entry.agent_id)
    name = f"{entry.file}.{time.time_ns()}"
    moved = True
    try:
        files.move(folder / entry.file, target / name)
    except FileNotFoundError:
        moved = False
    note = {"reason": reason, "moved": moved, **mf.as_dict(entry)}
    files.put_small(target / f"{name}.reason.json", _note(note))
    files.sync(target)
    log.warning(
        "checkpoint.quarantined", agent_id=entry.agent_id, version=entry.version, reason=reason
    )


def quarantined_versions(files: Files, root: PurePath, agent_id: str) -> list[dict[str, Any]]:
    """The notes of the agent's quarantined versions (version, epoch, reason...), by version;
    a note that cannot be read is skipped."""
    out = []
    folder = root / FOLDER / agent_id
    for name in files.names(folder):
        if not name.endswith(".reason.json"):
            continue
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(files.get(folder / name))
            if isinstance(doc.get("version"), int) and isinstance(doc.get("epoch"), int):
                out.append(doc)
    return sorted(out, key=lambda d: int(d["version"]))


def rebuild_manifest(files: Files, root: PurePath, folder: PurePath, agent_id: str, raw: bytes,
                     why: str, keep: int) -> Manifest:
    """Set the bad manifest `raw` aside, then commit one listing the version files that verify,
    above the fence and version counter of every version quarantined before."""
    target = folder_of(files, root, agent_id)
    name = f"{MANIFEST}.{time.time_ns()}"
    files.put(target / name, raw)
    files.put_small(target / f"{name}.reason.json", _note({"reason": why}))
    found, corrupt = [], []
    for file in files.names(folder):
        version = mf.version_of(file)
        if version is None:
            continue
        data = files.get(folder / file)
        try:
            found.append(mf.scanned_entry(agent_id, version, data))
        except CheckpointCorrupt as exc:
            corrupt.append((mf.entry_for(agent_id, version, 0, data), str(exc)))
    for entry, reason in corrupt:
        quarantine_file(files, root, folder, entry, reason)
    noted = [(n["version"], n["epoch"]) for n in quarantined_versions(files, root, agent_id)]
    manifest = mf.rebuilt(agent_id, found, noted, keep)
    files.put(folder / MANIFEST, mf.to_json(manifest))
    log.warning("checkpoint.manifest_rebuilt", agent_id=agent_id, reason=why[:300],
                versions=[e.version for e in manifest.entries], epoch=manifest.epoch,
                version=manifest.version)
    return manifest


def _note(doc: dict[str, object]) -> bytes:
    return (json.dumps(doc, indent=1) + "\n").encode()
