"""An agent's checkpoint manifest: what it holds, how it is checked, and how a lost one is rebuilt.

The manifest (`MANIFEST.json` in the agent's folder) is the store's commit point: it lists the
committed versions and keeps the fence (the highest epoch ever committed) and the highest version
ever used apart from them. One that does not parse, or parses but lies (another agent, a file name
outside the folder, an entry above its own fence), is never trusted. It is rebuilt from what the
folder itself says: each version file carries its agent id, version and epoch (`agents.codec`'s
stamp), and each quarantined version left a note with its version and epoch, so the rebuilt fence
and version counter never run backwards. I/O stays with the caller (`pool.store.checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from pydantic import TypeAdapter, ValidationError

from agents.codec import CheckpointUnreadable, Stamp, decode, read_stamp
from agents.errors import CheckpointCorrupt
from agents.models import AgentRecord

MANIFEST: Final = "MANIFEST.json"
FORMAT: Final = 1
_VERSION_FILE: Final = re.compile(r"v(\d{8})\.arrow")


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One committed version of one agent's checkpoint."""

    agent_id: str
    version: int  # 1, 2, ...: strictly increasing per agent, never reused
    sha256: str  # hex digest of the file's bytes
    epoch: int  # fencing token of the writer (the Host's binding)
    size: int  # bytes
    file: str  # file name inside the agent's folder, always v{version:08d}.arrow


@dataclass(frozen=True, slots=True)
class Manifest:
    agent_id: str
    epoch: int  # highest epoch ever committed: the fence, even after entries are dropped
    version: int  # highest version ever used
    entries: tuple[ManifestEntry, ...]  # oldest first
    quarantined: str | None = None  # reason, when the whole agent was quarantined
    format: int = FORMAT


_adapter = TypeAdapter(Manifest)


def file_name(version: int) -> str:
    return f"v{version:08d}.arrow"


def entry_for(agent_id: str, version: int, epoch: int, data: bytes) -> ManifestEntry:
    return ManifestEntry(agent_id, version, hashlib.sha256(data).hexdigest(), epoch, len(data),
                         file_name(version))


def as_dict(obj: ManifestEntry | Manifest) -> dict[str, object]:
    # dataclasses.asdict deep-copies recursively: a third of a write's Python time.
    return {name: getattr(obj, name) for name in obj.__slots__}


def to_json(manifest: Manifest) -> bytes:
    doc = {**as_dict(manifest), "entries": [as_dict(e) for e in manifest.entries]}
    return json.dumps(doc, separators=(",", ":")).encode()


def parse(raw: bytes, agent_id: str) -> Manifest:
    """The manifest in `raw`; `CheckpointCorrupt` when it does not parse or lies."""
    try:
        manifest = _adapter.validate_json(raw, strict=True)
    except ValidationError as exc:
        raise CheckpointCorrupt(f"manifest of agent {agent_id} is invalid: {exc}") from None
    _check(manifest, agent_id)
    return manifest


def _check(m: Manifest, agent_id: str) -> None:
    """Refuse a manifest that parses but lies: it must never steer a read outside the folder."""
    problems = []
    if m.format != FORMAT:
        problems.append(f"format {m.format}")
    if m.agent_id != agent_id or any(e.agent_id != agent_id for e in m.entries):
        problems.append("agent id mismatch")
    if any(e.file != file_name(e.version) for e in m.entries):
        problems.append("unexpected file name")
    versions = [e.version for e in m.entries]
    if versions != sorted(set(versions)) or any(v < 1 or v > m.version for v in versions):
        problems.append("versions out of order")
    if any(e.epoch > m.epoch or e.epoch < 0 for e in m.entries):
        problems.append("entry epoch above the fence")
    if problems:
        raise CheckpointCorrupt(f"manifest of agent {agent_id} is invalid: {', '.join(problems)}")


def check_entry(entry: ManifestEntry, data: bytes) -> AgentRecord:
    """The record in a version file's bytes; `CheckpointCorrupt` when they are not the entry's."""
    if len(data) != entry.size:
        raise CheckpointCorrupt(f"size {len(data)} != {entry.size} in manifest")
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise CheckpointCorrupt("sha256 mismatch")
    check_stamp(entry, data)
    return check_record(entry.agent_id, data)


def check_record(agent_id: str, data: bytes) -> AgentRecord:
    record = decode(data)
    if record.spec.agent_id != agent_id:
        raise CheckpointCorrupt(f"holds agent {record.spec.agent_id}, expected {agent_id}")
    return record


def check_stamp(entry: ManifestEntry, data: bytes) -> None:
    """A version file stamped as another agent, version or epoch is not this entry's file."""
    stamp = read_stamp(data)
    if stamp is not None and stamp != Stamp(entry.agent_id, entry.version, entry.epoch):
        raise CheckpointCorrupt(f"stamped as agent {stamp.agent_id} version {stamp.version} "
                                f"epoch {stamp.epoch}, expected version {entry.version} epoch "
                                f"{entry.epoch}")


def version_of(name: str) -> int | None:
    """The version of a version file's name; None for any other file."""
    match = _VERSION_FILE.fullmatch(name)
    return int(match[1]) if match else None


def scanned_entry(agent_id: str, version: int, data: bytes) -> ManifestEntry:
    """The entry of a version file found in the folder; `CheckpointCorrupt` when it is not a
    checkpoint of this agent and version. A record this version's models refuse is listed."""
    stamp = read_stamp(data)
    if stamp is not None and (stamp.agent_id, stamp.version) != (agent_id, version):
        raise CheckpointCorrupt(f"stamped as agent {stamp.agent_id} version {stamp.version}")
    try:
        record = decode(data)
    except CheckpointUnreadable:
        pass  # well-formed: kept for a version that can read it
    else:
        if record.spec.agent_id != agent_id:
            raise CheckpointCorrupt(f"holds agent {record.spec.agent_id}, expected {agent_id}")
    return entry_for(agent_id, version, stamp.epoch if stamp else 0, data)


def rebuilt(agent_id: str, found: Iterable[ManifestEntry], noted: Iterable[tuple[int, int]],
            keep: int) -> Manifest:
    """A manifest of the verified version files `found`, its fence and version counter above
    those of the quarantined versions `noted` ((version, epoch) pairs) too."""
    entries = sorted(found, key=lambda e: e.version)
    pairs = [(e.version, e.epoch) for e in entries] + list(noted)
    return Manifest(agent_id, max((e for _, e in pairs), default=0),
                    max((v for v, _ in pairs), default=0), tuple(entries[-keep:]))
