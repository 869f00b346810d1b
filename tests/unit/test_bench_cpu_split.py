"""The real-model benchmark's CPU split: the engine actor's CPU seconds against the rest, read
from two snapshots of every process (a process that started between them counts from zero)."""

from __future__ import annotations

import os

import pytest

from pool.bench.overhead import cpu_seconds, cpu_split


def test_the_engine_share_counts_only_what_each_process_used_between_the_readings() -> None:
    before = {1: (100.0, "ray::LlamaEngineActor"), 2: (50.0, "ray::PoolManager"),
              3: (7.0, "/usr/bin/raylet --raylet_sock x")}
    after = {1: (130.0, "ray::LlamaEngineActor"), 2: (54.0, "ray::PoolManager"),
             3: (8.0, "/usr/bin/raylet --raylet_sock x"), 4: (5.0, "ray::HostActor")}
    split = cpu_split(before, after)
    assert split["engine_s"] == pytest.approx(30.0) and split["total_s"] == pytest.approx(40.0)
    assert split["engine_share"] == pytest.approx(0.75)
    assert split["line"] == ("engine 30.0 s, the rest 10.0 s: ray::HostActor 5.0, "
                             "ray::PoolManager 4.0, raylet 1.0")


def test_a_reading_of_this_machine_holds_this_process() -> None:
    seen = cpu_seconds()
    assert os.getpid() in seen and seen[os.getpid()][0] > 0
    assert cpu_split(seen, seen)["engine_share"] == 0.0, "nothing used: no division by zero"
