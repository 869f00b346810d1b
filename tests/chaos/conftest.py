"""Chaos tests: a local Ray of our own per module (never another Ray on the machine).

Each test kills processes it finds by pid in this cluster only (`pool.ops.checks.actor_pids`), and
ends with the three checks of `pool.ops.checks`. Workers run `chaos_inject.install` at start-up so a
test can fill the disk (ENOSPC) by creating a flag file.
"""

from __future__ import annotations

import os
import secrets

# A thread still polling after our cluster is gone must fail, not join another Ray on the machine.
os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
# Our own token: a driver elsewhere on the machine that joins "the latest cluster" (address="auto")
# cannot land in ours and take its GPU share. Subprocesses inherit it.
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_harness import start_ray


@pytest.fixture(scope="module")
def chaos_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray for the module; yields the folder of the fault flags."""
    import ray

    flags = tmp_path_factory.mktemp("flags")
    start_ray(flags)
    yield flags
    ray.shutdown()
