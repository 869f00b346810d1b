"""The agent table: every registered agent as a row of Parquet in the checkpoint store.

Theory of operation. Registering an agent writes no checkpoint: a dormant agent that never ran is a
row `(agent_id, priority, profile)` here (`profile`: its spec without id and priority, as JSON, ""
for the defaults; see `pool.control.registry.profile_of`), and its first checkpoint is written by the Host
that first commits it. Each `append` writes one file `root/registry/agents-<ns>-<pid>.parquet`
holding the rows of one `register` call: written to a temp file, fsynced, renamed, and the folder
fsynced (`pool.store.private.write_private`), so a file is whole or absent; on an object store
(`pool.store.files.ObjectFiles`) each file is one PUT, whole or absent too. A crash leaves at most a
`*.tmp`, which `read` ignores and the next `append` removes once its writer is gone. A file that
does not parse (the disk lied) is set aside in `registry/quarantine/` with a log event, and the
rest is read: the driver registers its agents again on every run. `read` returns the rows of all
files in the order they were written; the first row of an agent wins, as registration never changes
a spec. Past `COMPACT_AT` files, `compact` merges them into one (the merged file is committed
before the old ones are removed, so a crash between leaves duplicates, which `read` folds).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePath
from typing import Final

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import structlog

from agents.codec import encode
from agents.errors import StorageError
from agents.models import AgentRecord
from pool.control.registry import Registry, Row
from pool.store.checkpoint import CheckpointStore
from pool.store.location import open_root

FOLDER: Final = "registry"
COMPACT_AT: Final = 64  # files; a manager start merges more than this into one
SCHEMA: Final = pa.schema([
    pa.field("agent_id", pa.string(), nullable=False),
    pa.field("priority", pa.int8(), nullable=False),
    pa.field("profile", pa.string(), nullable=False),
])

log = structlog.get_logger(__name__)


class AgentTable:
    """The registered agents under `store_root/registry/`; see the module docstring."""

    def __init__(self, store_root: str | Path, filesystem: pafs.FileSystem | None = None) -> None:
        """`store_root`: the store's path or URI (`pool.store.location.open_root`)."""
        self.io, root = open_root(store_root, filesystem)
        self.folder = root / FOLDER

    def append(self, rows: Sequence[Row]) -> None:
        """Commit `rows` as one file; committed only when this returns."""
        if not rows:
            return
        ids, priorities, profiles = zip(*rows, strict=True)
        table = pa.table([pa.array(ids, pa.string()), pa.array(priorities, pa.int8()),
                          pa.array(profiles, pa.string())], schema=SCHEMA)
        self._commit(table)

    def load(self) -> Iterator[Row]:
        """`read`, after merging many files into one (a manager's start)."""
        self.compact()
        return self.read()

    def read(self) -> Iterator[Row]:
        """Every registered agent once (its first row), in the order registered."""
        seen: set[str] = set()
        for path in self.files():
            table = self._load(path)
            if table is None:
                continue
            for agent_id, priority, profile in zip(*(table.column(i).to_pylist() for i in range(3)),
                                                   strict=True):
                if agent_id not in seen:
                    seen.add(agent_id)
                    yield agent_id, priority, profile

    def files(self) -> list[PurePath]:
        """The committed files, oldest first (temp files are not listed)."""
        return [self.folder / name for name in self.io.names(self.folder)
                if name.startswith("agents-") and name.endswith(".parquet")]

    def compact(self) -> bool:
        """Merge the files into one when there are more than `COMPACT_AT`; whether it did."""
        old = self.files()
        if len(old) <= COMPACT_AT:
            return False
        rows = list(self.read())
        self.append(rows)
        for path in old:
            self.io.delete(path)  # gone already: another process compacted too
        log.info("agent_table.compacted", files=len(old), agents=len(rows))
        return True

    def _commit(self, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        path = self.folder / f"agents-{time.time_ns():020d}-{os.getpid()}.parquet"
        try:
            self.io.make_dir(self.folder)
            if self.io.is_local:
                _remove_temps(Path(self.folder))
            self.io.put(path, sink.getvalue().to_pybytes())
        except OSError as exc:
            raise StorageError(f"cannot write the agent table under {self.folder}: {exc}") from exc

    def _load(self, path: PurePath) -> pa.Table | None:
        try:
            return pq.read_table(pa.BufferReader(self.io.get(path)), schema=SCHEMA)
        except FileNotFoundError:  # compacted away by another process meanwhile
            return None
        except (pa.ArrowException, OSError) as exc:
            self._quarantine(path, str(exc))
            return None

    def _quarantine(self, path: PurePath, why: str) -> None:
        target = self.folder / "quarantine"
        self.io.make_dir(target)
        with contextlib.suppress(FileNotFoundError):
            self.io.move(path, target / path.name)
        log.warning("agent_table.file_quarantined", file=path.name, reason=why[:300])


def initial_bytes(store: CheckpointStore, registry: Registry, agent_id: str) -> bytes | None:
    """What an agent without a checkpoint binds from: the encoded `AgentRecord` of its spec, as
    its first checkpoint would hold it. None when it has a checkpoint."""
    if store.exists(agent_id):
        return None
    return encode(AgentRecord(spec=registry.spec(agent_id)))


def committed_or_initial(store: CheckpointStore, registry: Registry, agent_id: str) -> AgentRecord:
    """The agent's newest checkpoint that verifies, or its initial record if it has none."""
    if store.exists(agent_id):
        return store.read(agent_id)[0]
    return AgentRecord(spec=registry.spec(agent_id))


def _remove_temps(folder: Path) -> None:
    """What a crash mid-append left (its writer is gone): never committed, never read."""
    for path in folder.glob("agents-*.tmp"):
        if not _alive(path.name.split(".")[-2]):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _alive(pid: str) -> bool:
    """Whether the process that writes a temp file still runs (it may be appending now)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True
