"""The llama.cpp engine's KV snapshot of a slot, the copies the engine keeps, and references.

A snapshot is a header, the model's tag (a snapshot of another model is refused, not loaded) and
llama-server's slot file. The header names the snapshot (a random id) and says whether the engine
that saved it keeps a copy (`KeptSnapshots`, a folder of slot files, newest last, bounded in
bytes). The checkpoint on disk always gets the whole snapshot. The hot tier gets a *reference*
(header and tag, no slot file) when the engine keeps a copy: activating the agent again then
restores its slot from the engine's own copy, and the snapshot's bytes do not travel through the
manager, the Host and the engine's call at all. A reference whose copy is gone (evicted, or the
engine restarted) is answered as such, and the Host restores from the checkpoint instead.
No Ray, no llama.cpp here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import struct
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_FOLDER: Final = "selfheal-slots-"  # + pid_space() + "-" + the engine's pid + "-" + random
_HEAD: Final = struct.Struct("<4sHB16sI")  # magic, version, kept, id, len(model tag)
MAGIC: Final = b"SHKV"
VERSION: Final = 3


@dataclass(frozen=True, slots=True)
class Snapshot:
    sid: str  # the snapshot's id, hex
    kept: bool  # the engine that saved it keeps a copy (under this id)
    data: memoryview  # llama-server's slot file; empty for a reference


def engine_folder(base: str | None = None) -> Path:
    """A new private (0700) folder for this process's slot files, in `base` (default: the temp
    folder). The folders of engines that died without closing (kill -9), with their kept
    snapshots, are deleted first: their process is gone. Only folders named in this process's
    pid space are looked at: a pid of another container sharing the folder says nothing here."""
    root = Path(base or tempfile.gettempdir())
    space = pid_space()
    for old in root.glob(f"{_FOLDER}{space}-*"):
        pid = old.name.removeprefix(f"{_FOLDER}{space}-").partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{_FOLDER}{space}-{os.getpid()}-", dir=root))


def pid_space() -> str:
    """8 hex digits naming whose pid numbers these are: this boot's pid namespace (Linux), else
    this host."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            key = f"{f.read().strip()}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        key = socket.gethostname()
    return hashlib.sha1(key.encode()).hexdigest()[:8]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def new_id() -> str:
    return secrets.token_hex(16)


def pack(sid: str, kept: bool, tag: bytes, data: bytes) -> bytes:
    return _HEAD.pack(MAGIC, VERSION, kept, bytes.fromhex(sid), len(tag)) + tag + data


def parse(blob: bytes, tag: bytes) -> Snapshot | None:
    """The snapshot in `blob`; None when it is torn, of another format, or of another model."""
    head = _header(blob)
    if head is None or blob[_HEAD.size : head[2]] != tag:
        return None
    kept, sid, end = head
    return Snapshot(sid.hex(), kept, memoryview(blob)[end:])


def reference(blob: bytes) -> bytes | None:
    """A reference to the snapshot in `blob` while its engine keeps a copy; None when it keeps
    none (or `blob` is not a whole snapshot: the hot tier then carries the bytes)."""
    head = _header(blob)
    if head is None or not head[0] or len(blob) <= head[2]:
        return None
    return blob[: head[2]]


def _header(blob: bytes) -> tuple[bool, bytes, int] | None:
    """(kept, id, where the slot file starts) of a snapshot of this format; None otherwise."""
    if len(blob) < _HEAD.size:
        return None
    magic, version, kept, sid, tag_len = _HEAD.unpack_from(blob)
    if (magic, version) != (MAGIC, VERSION):
        return None
    return bool(kept), sid, _HEAD.size + tag_len


class KeptSnapshots:
    """Slot files an engine keeps in `folder` under their snapshot's id, at most `limit_bytes` in
    all: the least recently saved or restored goes first. Safe across threads."""

    def __init__(self, folder: Path, limit_bytes: int) -> None:
        self.folder, self.limit = folder, limit_bytes
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    @staticmethod
    def name(sid: str) -> str:
        """The file name of snapshot `sid` in the folder (llama-server takes bare names)."""
        return f"kept-{sid}.bin"

    def add(self, sid: str, size: int) -> bool:
        """Keep the file just written under `name(sid)`; False (and the file deleted) when it
        alone is over the limit. Older files go until the rest fits."""
        if size > self.limit:
            (self.folder / self.name(sid)).unlink(missing_ok=True)
            return False
        with self._lock:
            self._sizes[sid] = size
            self._total += size
            gone = []
            while self._total > self.limit:
                old, freed = self._sizes.popitem(last=False)
                self._total -= freed
                gone.append(old)
        for old in gone:
            (self.folder / self.name(old)).unlink(missing_ok=True)
        return True

    def take(self, sid: str) -> str | None:
        """The file name of snapshot `sid`, now the most recently used; None when not kept."""
        with self._lock:
            if sid not in self._sizes:
                return None
            self._sizes.move_to_end(sid)
        return self.name(sid)

    def figures(self) -> dict[str, float]:
        with self._lock:
            return {"kept_snapshots": len(self._sizes), "kept_bytes": self._total}
