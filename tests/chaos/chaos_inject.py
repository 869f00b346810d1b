"""Fault injection inside Ray worker processes: a `worker_process_setup_hook`.

`install` wraps the low-level write under the pool's one durable write
(`pool.store.private.write_all`, called by `write_private`, which every checkpoint commit goes
through): while the flag file `$CHAOS_FLAG_DIR/enospc` exists, every checkpoint write in every
Host (and the manager) fails with ENOSPC, as on a full disk. Removing the file frees the disk.

It also counts executions engine-side: every `generate` of the scripted engine appends
`task_id attempt seed` to `$CHAOS_FLAG_DIR/executions/<pid>.log`, so the checks see how often a
task really ran, apart from how many results it got.

And it holds agents in a state: while the file `$CHAOS_FLAG_DIR/hold/<agent_id>` exists and
names a state (`recovering`, `degraded`, ...), the Host of that agent stops right after the agent
enters that state, says so (`hold/<agent_id>.held`) and waits there until the test removes the
file. A test sees the state for as long as it needs, whatever the machine's speed.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path


def disk_full_flag() -> Path | None:
    folder = os.environ.get("CHAOS_FLAG_DIR")
    return Path(folder) / "enospc" if folder else None


def executions_dir() -> Path | None:
    folder = os.environ.get("CHAOS_FLAG_DIR")
    return Path(folder) / "executions" if folder else None


def hold_dir() -> Path | None:
    folder = os.environ.get("CHAOS_FLAG_DIR")
    return Path(folder) / "hold" if folder else None


def install() -> None:
    _count_executions()
    _hold_states()
    import pool.store.private as private

    real = private.write_all
    flag = disk_full_flag()

    def write_all(fd: int, data: bytes) -> None:
        if flag is not None and flag.exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    private.write_all = write_all


def _count_executions() -> None:
    from agents.engines.base import GenRequest, GenResult
    from agents.engines.scripted import ScriptedEngine

    folder = executions_dir()
    if folder is None:
        return
    real = ScriptedEngine.generate

    def generate(self: ScriptedEngine, req: GenRequest) -> GenResult:
        folder.mkdir(exist_ok=True)
        line = f"{req.task_id}\t{req.attempt}\t{req.params.seed}\n".encode()
        fd = os.open(folder / f"{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)  # one write of a short line with O_APPEND: lines never interleave
        finally:
            os.close(fd)
        return real(self, req)

    ScriptedEngine.generate = generate  # type: ignore[method-assign]


def _hold_states() -> None:
    from agents.state import Event
    from pool.runtime.residency import Residency

    folder = hold_dir()
    if folder is None:
        return
    real = Residency._move

    def move(self: Residency, event: Event) -> None:
        real(self, event)  # moved (and reported) first: the hold is in the new state
        agent = self._require()
        flag = folder / agent.spec.agent_id
        if _names(flag, agent.state.value):
            (folder / f"{agent.spec.agent_id}.held").touch()  # the test knows the Host is there
        while _names(flag, agent.state.value):
            time.sleep(0.02)  # until the test removes the flag

    Residency._move = move  # type: ignore[method-assign]


def _names(flag: Path, state: str) -> bool:
    try:
        return flag.read_text().strip() == state
    except FileNotFoundError:
        return False
