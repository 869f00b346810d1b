"""Fixtures shared by the unit tests."""

from pathlib import Path

import pytest

from pool.store.checkpoint import CheckpointStore


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "ckpt", keep=3)
