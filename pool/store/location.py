"""Where the store lives: a local path, or a URI that `pyarrow.fs` resolves (Ray Train's
`storage_path` convention), so every node of a cluster reads the same store.

Theory of operation. `resolve(uri)` is pure: it reads the scheme and nothing else, so a `Location`
is cheap to make on any node from the URI string the driver passes through Ray (never a `Path`:
a path means "this node's disk"). A plain path or a `file://` URI is local and stays on the POSIX
code (`pool.store.files.PosixFiles`: fsync, flock, private modes, kill -9 safety). `s3://`,
`gs://`/`gcs://` (and Arrow's in-memory `mock://`, for tests) are object stores, reached through
`pyarrow.fs.FileSystem.from_uri` the first time the filesystem is needed (for S3 that first call
asks the bucket's region over the network). Any other scheme is a `UsageError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from urllib.parse import unquote

import pyarrow.fs as pafs

from agents.config import mangled, store_uri
from agents.errors import StorageError, UsageError
from pool.store.files import Files, ObjectFiles, PosixFiles


@dataclass(frozen=True, slots=True)
class Location:
    """A resolved store root: a local folder, or a path inside a `pyarrow.fs` filesystem."""

    uri: str  # as given (a plain path stays a plain path): what travels through Ray
    scheme: str  # "" for a local path (file:// included), else "s3", "gs", "gcs" or "mock"
    path: str  # the local path, or the path inside the filesystem (bucket first, no scheme)

    @property
    def is_local(self) -> bool:
        return self.scheme == ""

    def local_path(self, what: str = "this operation") -> Path:
        """The local folder; a `UsageError` naming `what` for an object store."""
        if not self.is_local:
            raise UsageError(f"{what} needs a local path or file:// URI, not {self.uri}")
        return Path(self.path)

    def filesystem(self) -> pafs.FileSystem:
        """The object store's `pyarrow.fs` filesystem (resolved now, on this node)."""
        if self.is_local:
            return pafs.LocalFileSystem()
        try:
            fs, _ = pafs.FileSystem.from_uri(self.uri)
        except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
            raise StorageError(f"cannot open the store {self.uri}: {exc}") from exc
        return fs


def resolve(uri: str | Path) -> Location:
    """The location `uri` names; a `UsageError` for a scheme the store cannot use."""
    if isinstance(uri, Path):
        if mangled(uri):  # OUT / "s3:/b/x" too: a local folder named "s3:" if taken as it is
            raise UsageError(f"{uri}: a URI made into a Path; pass the URI string")
        return Location(str(uri), "", str(uri))
    text = uri.strip()
    if not text:
        raise UsageError("the store location is empty")
    if "://" not in text:
        return Location(uri, "", text)
    try:
        parts = store_uri(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        return Location(uri, "", unquote(parts.path) or "/")
    if scheme == "mock":  # Arrow reads mock://host/p as the path "p"
        return Location(uri, scheme, parts.path.strip("/"))
    path = str(PurePosixPath(parts.netloc) / parts.path.lstrip("/")).rstrip("/")
    return Location(uri, "gs" if scheme == "gcs" else scheme, path)


def open_root(root: str | Path, filesystem: pafs.FileSystem | None = None) -> tuple[Files, PurePath]:
    """The files of the store at `root` and its root path in them; with `filesystem`, `root` is a
    path inside that filesystem (tests; an S3 filesystem with explicit credentials)."""
    if filesystem is not None:
        return ObjectFiles(filesystem), PurePosixPath(str(root).strip("/"))
    where = resolve(root)
    if where.is_local:
        return PosixFiles(), Path(where.path)
    return ObjectFiles(where.filesystem()), PurePosixPath(where.path)


def run_root(out: Path | str, root: str) -> str:
    """The store root of a run whose `--out` is `out`, as the string the driver hands the pool:
    a URI as it is (it names the same store on every node); a path made absolute, a relative one
    under `out` (a Host on another node must not read it against its own working folder): for an
    object-store `out`, the URI under it."""
    where = resolve(root)
    if not where.is_local:
        return root
    local, base = Path(where.path), resolve(out)
    if not local.is_absolute() and not base.is_local:
        return f"{base.uri.rstrip('/')}/{local.as_posix()}"
    joined = resolve(local if local.is_absolute() else Path(base.path) / local)  # refuses OUT/s3:/...
    return str(Path(joined.path).resolve())
