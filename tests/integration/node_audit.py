"""Which files each Ray worker opens: a `worker_process_setup_hook` for the multi-node test.

Each simulated node of the test's cluster runs with its own `TMPDIR` (its node-local root: where
a Host's temp files, and llama.cpp's slot files, go). `install` adds a Python audit hook that
notes every path the worker opens under `$NODE_AUDIT_BASE` (the node roots and the shared store)
in `$NODE_AUDIT_BASE/audit/<pid>.log`, one `own root <tab> path` line per path, so the test can
tell which node's process touched which folder. Audit hooks see every `open()` and `os.open()`,
pyarrow's reads through Python files included; nothing can remove one once added.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from typing import Any


def install() -> None:
    base = os.environ.get("NODE_AUDIT_BASE")
    if not base:
        return
    audit = os.path.join(base, "audit")
    own = tempfile.gettempdir()
    os.makedirs(audit, exist_ok=True)
    fd = os.open(os.path.join(audit, f"{os.getpid()}.log"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # opened before the hook exists
    os.write(fd, f"{own}\t{own}\n".encode())  # every process says where its own root is
    seen: set[str] = set()
    lock = threading.Lock()

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.path.abspath(os.fsdecode(os.fspath(args[0])))
        if not path.startswith(base) or path.startswith(audit):
            return
        with lock:
            if path not in seen:
                seen.add(path)
                os.write(fd, f"{own}\t{path}\n".encode())

    sys.addaudithook(hook)
