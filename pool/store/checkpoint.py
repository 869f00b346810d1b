"""The durable checkpoint tier: crash-safe, versioned Arrow files on disk, one folder per agent.

Theory of operation (DESIGN.md section 7). Agent `a` lives in `root/agents/<hh>/<a>/`, where `hh`
is the first byte of sha256(a) in hex, so 10^5 agents spread over 256 folders. The folder holds
`v00000007.arrow` data files, `MANIFEST.json` and a `.lock` file. A write holds an exclusive
`flock` on `.lock`, writes the data to a `*.tmp` file, fsyncs it, renames it to its version name
and fsyncs the folder; only then does it replace the manifest (same temp + fsync + rename + fsync
protocol). The manifest is the commit point: a file it does not list is never read, and whatever a
crash leaves behind (temp files, a renamed but uncommitted version) is deleted by the next write.

The manifest keeps the highest epoch and version ever committed apart from its entries, so that
dropping a bad version never lets versions run backwards or a zombie Host (lower epoch) write.
A read checks size, sha256, the file's stamp and a full decode of the newest entry; a file that
fails (corrupt: `CheckpointCorrupt`) is moved to `root/quarantine/<a>/` with a reason file
(`pool.store.quarantine`), dropped from the manifest, and the previous version is tried. A file
that verifies but cannot be decoded now (out of memory, a limit tightened by an upgrade:
`CheckpointUnreadable`), or a read that fails, is left in place and the read raises. A manifest
that does not parse or lies is set aside and rebuilt from the version files (`pool.store.manifest`,
`pool.store.quarantine`). Only the project's typed errors leave this module: `StorageError` and
its subclasses.

The store is named by a path or a URI (`pool.store.location`): a path or `file://` is the local
disk as above (`pool.store.files.PosixFiles`: every file through `pool.store.private.write_private`);
`s3://` and `gs://` are object stores through `pyarrow.fs` (`ObjectFiles`), where the same
protocol runs on object PUTs without rename or flock: the manifest PUT is still the commit point,
and one writer per agent rests on the pool's epochs, as `pool.store.files` spells out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePath
from typing import Any, Final

import pyarrow.fs as pafs
import structlog
from pydantic import TypeAdapter, ValidationError

from agents.codec import Stamp, encode, stamped
from agents.errors import CheckpointCorrupt, StaleEpoch, StorageError, UsageError
from agents.models import AgentId, AgentRecord
from pool.store import manifest as mf
from pool.store import quarantine as qt
from pool.store.files import LOCK
from pool.store.location import open_root
from pool.store.manifest import MANIFEST, Manifest, ManifestEntry

__all__ = ["LOCK", "MANIFEST", "STEPS", "CheckpointStore", "ManifestEntry"]

STEPS: Final = ("temp_written", "fsynced", "renamed", "manifest_written")

log = structlog.get_logger(__name__)
_agent_id = TypeAdapter(AgentId)


class CheckpointStore:
    """Versioned, crash-safe agent checkpoints under `root`; see the module docstring."""

    def __init__(
        self, root: str | Path, keep: int = 3, fault_hook: Callable[[str], None] | None = None,
        filesystem: pafs.FileSystem | None = None,
    ) -> None:
        """`root`: a path, a file:// URI, or an s3://, gs:// or mock:// URI
        (`pool.store.location`); with `filesystem`, a path inside that filesystem."""
        if keep < 1:
            raise UsageError(f"keep must be at least 1, got {keep}")
        self.keep = keep
        self._hook = fault_hook
        self.uri = str(root)
        self.files, self._base = open_root(root, filesystem)
        # The local folder (for an object store, the path inside it: use the store's methods).
        self.root = Path(self._base)

    # ---- writes -------------------------------------------------------------------------

    def put_meta(self, name: str, data: bytes) -> None:
        """A pool-level file at the root (not an agent's: a pause, say), as durable as a commit."""
        try:
            self.files.make_dir(self._base)
            self.files.put(self._base / name, data)
        except OSError as exc:
            raise _storage_error(f"cannot write {name}", exc) from exc

    def get_meta(self, name: str) -> bytes | None:
        """A pool-level file's bytes; None when there is none."""
        try:
            return self.files.get(self._base / name)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _storage_error(f"cannot read {name}", exc) from exc

    def delete_meta(self, name: str) -> None:
        try:
            self.files.delete(self._base / name)
        except OSError as exc:
            raise _storage_error(f"cannot delete {name}", exc) from exc

    def write(self, record: AgentRecord, epoch: int) -> ManifestEntry:
        """Commit `record` as the agent's next version; committed only when this returns."""
        return self._commit(record.spec.agent_id, lambda stamp: encode(record, stamp), epoch)

    def write_bytes(self, agent_id: str, data: bytes, epoch: int) -> ManifestEntry:
        """Commit an already encoded record; bytes that do not decode to this agent are refused."""
        self._folder(agent_id)  # a bad id is a UsageError before the bytes are looked at
        mf.check_record(agent_id, data)
        return self._commit(agent_id, lambda stamp: stamped(data, stamp), epoch)

    def write_initial_many(self, records: Iterable[AgentRecord]) -> int:
        """Commit version 1 of every record whose agent has no checkpoint yet; how many were new.

        The batched path for registering many agents: one fsync per file and folder costs a few
        ms here, so the data files and manifest temps are written first, made durable by one
        `os.sync()`, then each manifest is linked into place (`os.link` never replaces one that
        a concurrent writer committed meanwhile) and a second `os.sync()` makes the links
        durable. Crash-safe like `write`: an agent whose manifest is not linked does not exist,
        and the next write removes what it left behind.
        """
        if not self.files.is_local:
            return self._put_initial_many(records)
        staged: list[tuple[Path, Path]] = []
        try:
            for record in records:
                agent_id = record.spec.agent_id
                folder = Path(self._folder(agent_id))
                if (folder / MANIFEST).exists():
                    continue
                self.files.make_dir(folder)
                data = encode(record, Stamp(agent_id, 1, 0))
                staged.append((folder, self._stage_initial(folder, agent_id, data)))
            if not staged:
                return 0
            os.sync()
            new = sum(self._link_manifest(folder, tmp) for folder, tmp in staged)
            os.sync()
        except OSError as exc:
            raise _storage_error("batched initial checkpoint write failed", exc) from exc
        return new

    def _stage_initial(self, folder: Path, agent_id: str, data: bytes) -> Path:
        """Version 1's data file and a manifest temp listing it, neither fsynced."""
        entry = mf.entry_for(agent_id, 1, 0, data)
        tmp = folder / f"{MANIFEST}.{os.getpid()}.tmp"
        with self.files.lock(folder):
            self.files.put_small(folder / entry.file, data)
            self.files.put_small(tmp, mf.to_json(Manifest(agent_id, 0, 1, (entry,))))
        return tmp

    def _link_manifest(self, folder: Path, tmp: Path) -> bool:
        with self.files.lock(folder):
            try:
                os.link(tmp, folder / MANIFEST)
            except FileExistsError:  # committed by another writer meanwhile: theirs stands
                return False
            finally:
                tmp.unlink(missing_ok=True)
        return True

    def _put_initial_many(self, records: Iterable[AgentRecord]) -> int:
        """On an object store: version 1 then its manifest, two PUTs per agent without one.
        The look and the PUT are not atomic: registration has one writer, the manager."""
        new = 0
        try:
            for record in records:
                agent_id = record.spec.agent_id
                folder = self._folder(agent_id)
                if self.files.exists(folder / MANIFEST):
                    continue
                data = encode(record, Stamp(agent_id, 1, 0))
                entry = mf.entry_for(agent_id, 1, 0, data)
                self.files.make_dir(folder)
                self.files.put(folder / entry.file, data)
                self._save_manifest(folder, Manifest(agent_id, 0, 1, (entry,)))
                new += 1
        except OSError as exc:
            raise _storage_error("initial checkpoint write failed", exc) from exc
        return new

    def _commit(self, agent_id: str, make: Callable[[Stamp], bytes], epoch: int) -> ManifestEntry:
        """Commit the bytes `make` gives for the new version's stamp (known under the lock)."""
        folder = self._folder(agent_id)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise UsageError(f"epoch must be a non-negative int, got {epoch!r}")
        try:
            self.files.make_dir(folder, durable=True)
            with self.files.lock(folder):
                return self._commit_locked(folder, agent_id, make, epoch)
        except OSError as exc:
            raise _storage_error(f"checkpoint write for agent {agent_id} failed", exc) from exc

    def _commit_locked(
        self, folder: PurePath, agent_id: str, make: Callable[[Stamp], bytes], epoch: int
    ) -> ManifestEntry:
        old = self._load_manifest(folder, agent_id, locked=True) or Manifest(agent_id, 0, 0, ())
        if epoch < old.epoch:
            raise StaleEpoch(
                f"agent {agent_id}: write with epoch {epoch} refused, epoch {old.epoch} committed"
            )
        self._remove_temps(folder)
        version = old.version + 1
        data = make(Stamp(agent_id, version, epoch))  # a lost manifest is rebuilt from the files
        entry = mf.entry_for(agent_id, version, epoch, data)
        # A failure from here on leaves at worst an unlisted file: never read, pruned next time.
        self.files.put(folder / entry.file, data, step=self._step)
        self._step("renamed")
        kept = (*old.entries, entry)[-self.keep :]
        self._save_manifest(folder, Manifest(agent_id, epoch, version, kept))
        self._step("manifest_written")
        self._prune(folder, kept)
        return entry

    def _save_manifest(self, folder: PurePath, manifest: Manifest) -> None:
        self.files.put(folder / MANIFEST, mf.to_json(manifest))

    def _prune(self, folder: PurePath, kept: tuple[ManifestEntry, ...]) -> None:
        live = {e.file for e in kept}
        try:
            for name in self.files.names(folder):
                if name.endswith(".arrow") and name not in live:
                    self.files.delete(folder / name)
        except OSError as exc:  # the write is committed; the next one prunes again
            log.warning("checkpoint.prune_failed", folder=str(folder), error=str(exc))

    def _remove_temps(self, folder: PurePath) -> None:
        for name in self.files.names(folder):
            if name.endswith(".tmp"):
                self.files.delete(folder / name)

    def _step(self, step: str) -> None:
        if self._hook is not None:
            self._hook(step)

    # ---- reads --------------------------------------------------------------------------

    def read(self, agent_id: str) -> tuple[AgentRecord, ManifestEntry]:
        """The newest version that verifies; bad newer ones are quarantined on the way."""
        _, record, entry = self._read_verified(agent_id)
        return record, entry

    def read_bytes(self, agent_id: str) -> tuple[bytes, ManifestEntry]:
        """Like `read`, returning the verified file's bytes."""
        data, _, entry = self._read_verified(agent_id)
        return data, entry

    def verify(self, agent_id: str) -> ManifestEntry:
        """Read and verify the newest version (quarantining bad ones); for checks and tools."""
        return self._read_verified(agent_id)[2]

    def _read_verified(self, agent_id: str) -> tuple[bytes, AgentRecord, ManifestEntry]:
        folder = self._folder(agent_id)
        try:
            if not self.files.exists(folder / MANIFEST):
                raise StorageError(f"no checkpoint for agent {agent_id} under {self.uri}")
            with self.files.lock(folder):
                return self._read_locked(folder, agent_id)
        except OSError as exc:
            raise _storage_error(f"checkpoint read for agent {agent_id} failed", exc) from exc

    def _read_locked(self, folder: PurePath, agent_id: str) -> tuple[bytes, AgentRecord, ManifestEntry]:
        manifest = self._load_manifest(folder, agent_id, locked=True)
        if manifest is None:
            raise StorageError(f"no checkpoint for agent {agent_id} under {self.uri}")
        if manifest.quarantined is not None:
            raise CheckpointCorrupt(f"agent {agent_id} is quarantined: {manifest.quarantined}")
        entries = list(manifest.entries)
        try:
            while entries:
                entry = entries[-1]
                reason = None
                try:
                    data = self.files.get(folder / entry.file)
                    return data, mf.check_entry(entry, data), entry
                except FileNotFoundError:
                    reason = "file missing"
                except CheckpointCorrupt as exc:
                    reason = str(exc)
                self._quarantine_file(folder, entry, reason)
                entries.pop()
            raise CheckpointCorrupt(f"agent {agent_id}: no version verifies")
        finally:
            if len(entries) != len(manifest.entries):
                self._save_manifest(folder, dataclasses.replace(manifest, entries=tuple(entries)))

    # ---- manifest -----------------------------------------------------------------------

    def latest(self, agent_id: str) -> ManifestEntry | None:
        """The newest committed entry (not verified), or None for an unknown or emptied agent."""
        entries = self.versions(agent_id)
        return entries[-1] if entries else None

    def next_epoch(self, agent_id: str, after: int = 0) -> int:
        """An epoch no commit refuses: above the fence (the highest epoch ever committed, which
        a quarantined newest version may have held alone) and above `after`."""
        manifest = self._load_manifest(self._folder(agent_id), agent_id)
        return max(after, manifest.epoch if manifest else 0) + 1

    def versions(self, agent_id: str) -> list[ManifestEntry]:
        """The committed entries, oldest first (not verified); [] for an unknown agent."""
        manifest = self._load_manifest(self._folder(agent_id), agent_id)
        return [] if manifest is None else list(manifest.entries)

    def exists(self, agent_id: str) -> bool:
        """Whether the store knows the agent (a quarantined agent exists: reading it raises)."""
        return self.files.exists(self._folder(agent_id) / MANIFEST)

    def agent_ids(self) -> Iterator[str]:
        """Every known agent, shard by shard (not globally sorted)."""
        agents = self._base / "agents"
        for shard in self.files.names(agents):
            for name in self.files.names(agents / shard):
                if self.files.exists(agents / shard / name / MANIFEST):
                    yield name

    def _load_manifest(self, folder: PurePath, agent_id: str, locked: bool = False) -> Manifest | None:
        """The agent's manifest (None: no such agent); a corrupt one is rebuilt, under the
        folder's lock (`locked`: the caller holds it)."""
        try:
            raw = self.files.get(folder / MANIFEST)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _storage_error(f"manifest of agent {agent_id} unreadable", exc) from exc
        try:
            return mf.parse(raw, agent_id)
        except CheckpointCorrupt as exc:
            if locked:
                return qt.rebuild_manifest(self.files, self._base, folder, agent_id, raw,
                                           str(exc), self.keep)
        try:
            with self.files.lock(folder):  # another reader may have rebuilt it meanwhile: look again
                return self._load_manifest(folder, agent_id, locked=True)
        except OSError as exc:
            raise _storage_error(f"manifest of agent {agent_id} not rebuilt", exc) from exc

    def quarantined_versions(self, agent_id: str) -> list[dict[str, Any]]:
        """The notes of the agent's quarantined versions (version, epoch, reason...), by version."""
        return qt.quarantined_versions(self.files, self._base, agent_id)

    # ---- quarantine ---------------------------------------------------------------------

    def quarantine(self, agent_id: str, reason: str) -> None:
        """Move all of the agent's versions to `root/quarantine/`; reading it then raises."""
        folder = self._folder(agent_id)
        try:
            if not self.files.exists(folder / MANIFEST):
                raise StorageError(f"no checkpoint for agent {agent_id} under {self.uri}")
            with self.files.lock(folder):
                manifest = self._load_manifest(folder, agent_id, locked=True)
                if manifest is None:
                    raise StorageError(f"no checkpoint for agent {agent_id} under {self.uri}")
                for entry in reversed(manifest.entries):
                    self._quarantine_file(folder, entry, reason)
                self._save_manifest(
                    folder, dataclasses.replace(manifest, entries=(), quarantined=reason)
                )
        except OSError as exc:
            raise _storage_error(f"quarantine of agent {agent_id} failed", exc) from exc
        log.warning("checkpoint.agent_quarantined", agent_id=agent_id, reason=reason)

    def _quarantine_file(self, folder: PurePath, entry: ManifestEntry, reason: str) -> None:
        qt.quarantine_file(self.files, self._base, folder, entry, reason)

    # ---- layout -------------------------------------------------------------------------

    def _folder(self, agent_id: str) -> PurePath:
        try:
            _agent_id.validate_python(agent_id, strict=True)
        except ValidationError:
            raise UsageError(f"invalid agent id {agent_id!r}") from None
        shard = hashlib.sha256(agent_id.encode()).hexdigest()[:2]
        return self._base / "agents" / shard / agent_id


def _storage_error(what: str, exc: OSError) -> StorageError:
    # OSError(errno.ENOSPC) built with one argument has no .errno: look at args too.
    code = exc.errno if exc.errno is not None else next(iter(exc.args), None)
    detail = os.strerror(code) if isinstance(code, int) else str(exc)
    return StorageError(f"{what}: {detail}")
