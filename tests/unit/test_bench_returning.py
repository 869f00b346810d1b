"""Benchmark 5 of issue 11, returning agents with long context: its pure parts (personas, the
visit order, the figures and ratios). No Ray, no model."""

import math

import pytest

from pool.bench.returning import (
    Pass,
    compare,
    context_tokens,
    estimate_tokens,
    persona,
    question,
    side_figures,
    visit_order,
)


@pytest.mark.parametrize("tokens", [200, 1000])
def test_a_persona_is_about_the_requested_tokens(tokens: int) -> None:
    for agent in range(20):
        assert abs(estimate_tokens(persona(agent, tokens, seed=0)) - tokens) <= 0.1 * tokens


def test_personas_are_deterministic_and_distinct() -> None:
    first = [persona(a, 1000, seed=7) for a in range(200)]
    assert first == [persona(a, 1000, seed=7) for a in range(200)]
    assert len(set(first)) == len(first)
    assert persona(3, 1000, seed=7) != persona(3, 1000, seed=8)
    # distinct beyond the first line: another agent shares no long run of facts
    facts = [set(p.splitlines()[2:]) for p in first[:20]]
    assert all(len(facts[0] & other) <= 2 for other in facts[1:])


def test_a_persona_fits_an_agent_spec() -> None:
    from agents.models import AgentSpec

    AgentSpec(agent_id="a", system_prompt=persona(0, 1000, seed=0))  # max_length 4000 chars


def test_a_question_asks_about_a_fact_of_that_agent() -> None:
    p = persona(5, 200, seed=1)
    q = question(5, 2, p, seed=1)
    assert q == question(5, 2, p, seed=1)
    item = q.split("item ")[1].split(":")[0]
    assert f"\n{item}. " in p  # the fact it asks about is in the persona


def test_visits_of_one_agent_are_n_minus_one_others_apart() -> None:
    agents, visits = 6, 3
    order = visit_order(agents, visits)
    assert len(order) == agents * visits
    assert sorted(order) == sorted((v, a) for v in range(visits) for a in range(agents))
    for agent in range(agents):
        at = [i for i, (_, a) in enumerate(order) if a == agent]
        assert [order[i][0] for i in at] == list(range(visits))  # visits in order
        assert all(b - a - 1 == agents - 1 for a, b in zip(at, at[1:], strict=False))


def test_the_context_fits_persona_and_every_turn() -> None:
    assert context_tokens(1000, 3, answer_tokens=24) >= 2048
    big = context_tokens(3000, 10, answer_tokens=64)
    assert big % 256 == 0 and big >= 3000 + 10 * (64 + 40)


def _side(walls: list[float], done: int, evaluated: list[int]) -> dict[str, object]:
    passes = [Pass(visit=v, wall_s=w, latencies=(0.5, 1.0, 2.0), done=done, tasks=3,
                   prompt_evaluated=e, failed=1)
              for v, (w, e) in enumerate(zip(walls, evaluated, strict=True))]
    return side_figures(passes)


def test_side_figures_sum_the_passes() -> None:
    f = _side([2.0, 1.0, 1.0], done=3, evaluated=[3000, 300, 300])
    assert f["tasks"] == 9 and f["done"] == 9 and f["failed"] == 3
    assert f["tasks_per_s"] == pytest.approx(9 / 4.0)
    assert f["prompt_tokens_per_task"] == pytest.approx(3600 / 9)
    assert f["latency_s"]["p50"] == pytest.approx(1.0)
    assert f["returning"]["tasks_per_s"] == pytest.approx(6 / 2.0)
    assert f["returning"]["prompt_tokens_per_task"] == pytest.approx(100)
    assert [v["prompt_tokens_per_task"] for v in f["per_visit"]] == [1000, 100, 100]


def test_compare_gives_ratios_and_the_target() -> None:
    pool = _side([1.0, 0.5, 0.5], done=3, evaluated=[3000, 30, 30])
    server = _side([3.0, 3.0, 3.0], done=3, evaluated=[3000, 3000, 3000])
    r = compare(pool, server)
    assert r["ratio_tasks_per_s"] == pytest.approx(9.0 / 2.0)
    assert r["ratio_prompt_tokens"] == pytest.approx(3060 / 9000)
    assert r["ratio_latency_p50"] == pytest.approx(1.0)
    assert r["target_met"] is True
    assert compare(server, pool)["target_met"] is False


def test_compare_without_figures_is_not_a_verdict() -> None:
    empty = side_figures([])
    assert math.isnan(compare(empty, empty)["ratio_tasks_per_s"])
    assert compare(empty, empty)["target_met"] is None


def test_a_persona_over_what_an_agent_spec_holds_is_a_usage_error() -> None:
    from agents.errors import UsageError
    from pool.bench.returning import ReturningSizes, specs

    with pytest.raises(UsageError, match="persona"):
        specs(ReturningSizes(agents=1, persona_tokens=2000))


def test_a_benchmark_pool_outlives_a_long_pass_of_the_peer() -> None:
    # 48 agents x 1,000-token personas: one llama-server pass took over 300 s, the pool (undrained
    # meanwhile) reaped itself as an orphan and the benchmark died on its next submit
    from agents.config import DAY_S, load_settings
    from pool.bench.common import settings

    assert load_settings().pool.orphan_timeout_s < 600, "a run's pool is reaped within minutes"
    assert settings("llama_cpp").pool.orphan_timeout_s == DAY_S
    assert settings("scripted", pool={"orphan_timeout_s": 5}).pool.orphan_timeout_s == 5


def test_the_peer_answers_each_task_in_order_and_a_failed_request_is_not_remembered() -> None:
    import threading

    from agents.engines.base import GenRequest, GenResult
    from agents.models import AgentSpec, Task
    from pool.bench.returning import _Peer

    lock, busy = threading.Lock(), set()

    class Server:
        def generate(self, req: GenRequest, slot: int) -> GenResult:
            with lock:
                assert slot not in busy, "two requests on one slot"
                busy.add(slot)
            try:
                if req.task_id == "t-1":
                    raise RuntimeError("the server refused it")
                return GenResult(f"answer {req.task_id}, {len(req.memory)} turns", "stop", 10, 2, 0.0)
            finally:
                with lock:
                    busy.discard(slot)

    peer = _Peer(Server(), 2, {"a": AgentSpec(agent_id="a"), "b": AgentSpec(agent_id="b")})
    tasks = [Task(task_id=f"t-{i}", agent_id="ab"[i % 2], prompt=f"q{i}") for i in range(6)]
    _, out = peer.serve(tasks)
    assert [r.text.split(",")[0] if r else None for _, r in out] == [
        "answer t-0", None, "answer t-2", "answer t-3", "answer t-4", "answer t-5"]
    # a's three answers and b's two are its turns now (a user and an assistant turn each)
    assert len(peer.turns["a"]) == 6 and len(peer.turns["b"]) == 4
    assert peer.request(Task(task_id="t-9", agent_id="b", prompt="q")).memory == peer.turns["b"]
