"""The few file operations the checkpoint store makes, on a local disk or on an object store.

Theory of operation. `CheckpointStore` decides (manifests, epochs, verification, quarantine);
a `Files` does the I/O. `PosixFiles` is the local disk as the store always used it: every write is
`pool.store.private.write_private` (0600 temp, fsync, rename, fsync of the folder), folders are
0700, and an agent's folder is held by an exclusive `flock` on its `.lock` file.

`ObjectFiles` is a `pyarrow.fs` filesystem (S3, GCS, Arrow's mock). What holds there, and what
does not:
- A write is one object PUT (`open_output_stream`, made visible whole when the stream closes):
  a reader sees the old object or the new one, never a part. There is no temp file and no rename,
  and nothing to fsync: the store's own durability is the write's.
- The manifest PUT is the commit point, as on disk: the version object is PUT first, so a crash
  between the two leaves an unlisted object, which is never read and is pruned by the next commit.
- There is no lock: `lock` holds nothing. One writer per agent is the pool's rule, not the
  store's: the manager binds an agent to one Host at a time under a fresh epoch, and a commit
  reads the manifest's fence before its PUT. That check and the PUT are not one atomic step, so a
  zombie Host whose read came before the new owner's commit can still overwrite the manifest once;
  on a local disk the flock closes that window.
- A move (quarantine) is a copy then a delete, so a crash between leaves the object in both
  places; the manifest no longer lists it, so it is never read from the agent's folder.
- Objects get the bucket's permissions, not 0600: keep the bucket private.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath
from typing import Final, Protocol

import pyarrow.fs as pafs

from pool.store.private import FILE_MODE, fsync_dir, open_private, private_dir, write_private

LOCK: Final = ".lock"

Step = Callable[[str], None]


class Files(Protocol):
    is_local: bool

    def lock(self, folder: PurePath) -> contextlib.AbstractContextManager[None]: ...
    def make_dir(self, folder: PurePath, durable: bool = False) -> None: ...
    def put(self, path: PurePath, data: bytes, step: Step | None = None) -> None: ...
    def put_small(self, path: PurePath, data: bytes) -> None: ...
    def sync(self, folder: PurePath) -> None: ...
    def get(self, path: PurePath) -> bytes: ...
    def exists(self, path: PurePath) -> bool: ...
    def names(self, folder: PurePath) -> list[str]: ...
    def delete(self, path: PurePath) -> None: ...
    def move(self, src: PurePath, dst: PurePath) -> None: ...


class PosixFiles:
    """The local disk: fsync, rename, flock, private modes."""

    is_local = True

    @contextlib.contextmanager
    def lock(self, folder: PurePath) -> Iterator[None]:
        """Exclusive flock on the folder's lock file: one holder at a time, across processes."""
        fd = os.open(Path(folder) / LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def make_dir(self, folder: PurePath, durable: bool = False) -> None:
        private_dir(Path(folder), durable=durable)

    def put(self, path: PurePath, data: bytes, step: Step | None = None) -> None:
        write_private(Path(path), data, step=step)

    def put_small(self, path: PurePath, data: bytes) -> None:
        """Not fsynced: the caller makes it durable (`sync`)."""
        with open_private(Path(path), "wb") as fh:
            fh.write(data)

    def sync(self, folder: PurePath) -> None:
        fsync_dir(Path(folder))

    def get(self, path: PurePath) -> bytes:
        return Path(path).read_bytes()

    def exists(self, path: PurePath) -> bool:
        return Path(path).exists()

    def names(self, folder: PurePath) -> list[str]:
        try:
            return sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, path: PurePath) -> None:
        Path(path).unlink(missing_ok=True)

    def move(self, src: PurePath, dst: PurePath) -> None:
        os.replace(src, dst)


class ObjectFiles:
    """A `pyarrow.fs` filesystem: atomic PUTs, no rename, no lock (see the module docstring)."""

    is_local = False

    def __init__(self, fs: pafs.FileSystem) -> None:
        self.fs = fs

    @contextlib.contextmanager
    def lock(self, folder: PurePath) -> Iterator[None]:
        yield  # no lock on an object store: one writer per agent is the pool's rule

    def make_dir(self, folder: PurePath, durable: bool = False) -> None:
        self.fs.create_dir(str(folder), recursive=True)

    def put(self, path: PurePath, data: bytes, step: Step | None = None) -> None:
        with self.fs.open_output_stream(str(path)) as out:
            out.write(data)
            if step is not None:
                step("temp_written")
        if step is not None:  # the object is visible, whole, once the stream is closed
            step("fsynced")

    def put_small(self, path: PurePath, data: bytes) -> None:
        self.put(path, data)

    def sync(self, folder: PurePath) -> None:
        pass  # a PUT is durable when it returns

    def get(self, path: PurePath) -> bytes:
        with self.fs.open_input_stream(str(path)) as src:
            return bytes(src.readall())

    def exists(self, path: PurePath) -> bool:
        return bool(self.fs.get_file_info(str(path)).type != pafs.FileType.NotFound)

    def names(self, folder: PurePath) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(str(folder), allow_not_found=True))
        return sorted(info.base_name for info in infos)

    def delete(self, path: PurePath) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(str(path))

    def move(self, src: PurePath, dst: PurePath) -> None:
        self.fs.move(str(src), str(dst))
