"""The real-model benchmark's engine figures: the CPU split (the engine actor's CPU seconds
against the rest, read from two snapshots of every process; a process that started between them
counts from zero) and how full its decode steps were (llama-server's own counters)."""

from __future__ import annotations

import os

import pytest

from agents.engines.base import GenRequest
from agents.models import GenerationParams
from pool.bench.overhead import _serve_in_order, at_one_priority, cpu_seconds, cpu_split, decode_figures
from pool.bench.report import rows
from pool.bench.workload import shipped


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


def test_decode_figures_are_steps_per_task_and_tokens_per_step_between_two_readings() -> None:
    before = {"n_decode_total": 100.0, "prompt_tokens_total": 1000.0, "tokens_predicted_total": 500.0}
    after = {"n_decode_total": 300.0, "prompt_tokens_total": 4000.0, "tokens_predicted_total": 2500.0,
             "prompt_tokens_cached_total": 9999.0}  # reused from the cache: not evaluated
    assert decode_figures(before, after, 50, 20.0) == {
        "decodes_per_task": 4.0, "tokens_per_decode": 25.0, "ms_per_decode": 100.0,
        "prompt_tokens_per_task": 60.0, "generated_tokens_per_task": 40.0}
    assert set(decode_figures(after, after, 0, 1.0).values()) == {0.0}


def _p50(v: float) -> dict[str, float]:
    return {"p50": v}


_REAL = {"slots": 12, "tasks": 96, "pool_tasks_per_s": _p50(3.5), "server_tasks_per_s": _p50(5.0),
         "ratio_tasks_p50": 0.7, "ratio_latency_p50": 1.1, "ratio_latency_p95": 1.2,
         "pool_decodes_per_task": _p50(3.1), "server_decodes_per_task": _p50(2.25),
         "pool_tokens_per_decode": _p50(19.5), "server_tokens_per_decode": _p50(26.0),
         "pool_ms_per_decode": _p50(96.4), "server_ms_per_decode": _p50(76.0),
         "pool_prompt_tokens_per_task": _p50(30.04), "server_prompt_tokens_per_task": _p50(22.5),
         "pool_generated_tokens_per_task": _p50(33.3), "server_generated_tokens_per_task": _p50(31.0),
         "server_in_order_tasks_per_s": _p50(4.0), "ratio_tasks_in_order_p50": 0.875}


def test_the_report_shows_both_sides_decode_figures_and_na_for_an_older_result() -> None:
    real = _REAL
    shown = {r[1]: r[2] for r in rows({"real_model": real})}
    assert shown["engine decode steps per task, pool / llama-server (p50)"] == "3.10 / 2.25"
    assert shown["tokens per decode step, pool / llama-server (p50)"] == "19.5 / 26.0"
    assert shown["ms of the round per decode step, pool / llama-server (p50)"] == "96 / 76"
    assert shown["prompt tokens evaluated per task, pool / llama-server (p50)"] == "30.0 / 22.5"
    assert shown["tokens generated per task, pool / llama-server (p50)"] == "33.3 / 31.0"
    assert shown["llama-server with each agent's tasks in order: tasks/s; pool / it"] == "4.00 = 0.88x"
    older = {k: v for k, v in real.items() if "decode" not in k}
    shown = {r[1]: r[2] for r in rows({"real_model": older})}
    assert shown["tokens per decode step, pool / llama-server (p50)"] == "n/a / n/a"


def test_one_priority_keeps_the_agents_and_levels_their_priorities() -> None:
    _, specs = shipped(None)
    assert len({s.priority for s in specs}) > 1, "the shipped agents have priorities"
    level = at_one_priority(specs)
    assert [s.agent_id for s in level] == [s.agent_id for s in specs]
    assert {s.priority for s in level} == {5}
    assert [s.system_prompt for s in level] == [s.system_prompt for s in specs]
    shown = {r[1] for r in rows({"real_model": {**_REAL, "one_priority": True}})}
    assert "tasks/s pool / llama-server, 12 slots (96 tasks, agents at one priority)" in shown


def test_the_in_order_peer_runs_an_agents_requests_one_after_another_and_agents_side_by_side() -> None:
    import threading

    met = threading.Barrier(2, timeout=10)  # the first requests of two agents must overlap
    lock, busy, seen = threading.Lock(), set(), []

    class Server:
        def generate(self, req: GenRequest, slot: int) -> None:
            with lock:
                assert req.agent_id not in {a for a, _ in busy}, "one agent's requests overlapped"
                assert slot not in {s for _, s in busy}, "two requests on one slot"
                busy.add((req.agent_id, slot))
                seen.append(req.task_id)
            if req.task_id.endswith("-0"):
                met.wait()
            with lock:
                busy.discard((req.agent_id, slot))

    # agent by agent: sent as independent requests, a-0 (held at the barrier) and a-1 would overlap
    reqs = [GenRequest(agent, f"{agent}-{i}", "", "q", GenerationParams())
            for agent in ("a", "b") for i in range(3)]
    assert _serve_in_order(Server(), 2, reqs) > 0
    for agent in ("a", "b"):
        assert [t for t in seen if t.startswith(agent)] == [f"{agent}-{i}" for i in range(3)]
