"""Private files and folders: what the pool writes holds agents' memories and answers.

Checkpoints, the ledger, events and results are created owner-only: folders 0700, files 0600. The
mode is given when the file or folder is created (never a chmod afterwards, which would leave a
window open); the umask can only take bits away. A file the pool appends to that an older version
created with a wider mode is narrowed when it is opened, if this user owns it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path, durable: bool = False) -> Path:
    """Create `path` and its missing parents as 0700 folders; existing ones are left alone.
    `durable`: each new folder's name is fsynced into its parent (it must survive a crash)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            folder.mkdir(mode=DIR_MODE)
        if durable:
            fsync_dir(folder.parent)
    return missing[0] if missing else path


def open_private(path: Path, mode: str = "ab") -> IO[Any]:
    """`open(path, mode)`, creating the file 0600 (and narrowing our own wider one)."""
    fh = open(path, mode, opener=_private_opener)  # noqa: SIM115 - the caller closes it
    _narrow(fh.fileno())
    return fh


def write_private(path: Path, data: bytes, step: Callable[[str], None] | None = None) -> None:
    """Replace `path` with `data` atomically and durably: a 0600 temp, fsync, rename, fsync.

    The one durable write of the pool (checkpoints, manifests, the agent table, the summary).
    `step` is told "temp_written" and "fsynced" as they happen: the checkpoint store's kill -9
    tests stop a writer there. A failure removes the temp and leaves `path` as it was.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            write_all(fd, data)  # looked up per call: the chaos suite's full disk wraps it
            if step is not None:
                step("temp_written")
            os.fsync(fd)
        finally:
            os.close(fd)
        if step is not None:
            step("fsynced")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a new or renamed file) survive a crash."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, FILE_MODE)


def _narrow(fd: int) -> None:
    st = os.fstat(fd)
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o077)
