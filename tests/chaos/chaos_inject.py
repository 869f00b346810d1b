"""Fault injection inside Ray worker processes: a `worker_process_setup_hook`.

`install` wraps the checkpoint store's low-level write: while the flag file `$CHAOS_FLAG_DIR/enospc`
exists, every checkpoint write in every Host (and the manager) fails with ENOSPC, as on a full disk.
Removing the file frees the disk again.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def disk_full_flag() -> Path | None:
    folder = os.environ.get("CHAOS_FLAG_DIR")
    return Path(folder) / "enospc" if folder else None


def install() -> None:
    import pool.checkpoint as ck

    real = ck._write_all
    flag = disk_full_flag()

    def write_all(fd: int, data: bytes) -> None:
        if flag is not None and flag.exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    ck._write_all = write_all
