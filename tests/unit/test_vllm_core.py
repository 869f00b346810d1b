"""The pure parts of the vLLM engine: no vLLM, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.engines.base import GenRequest
from agents.engines.hf_model import check_hf_dir
from agents.engines.vllm import (
    MAX_UTIL,
    MIN_UTIL,
    CacheStats,
    chat_messages,
    constraint,
    fit_memory,
    memory_utilization,
    sampling_fields,
)
from agents.errors import UsageError
from agents.models import GenerationParams, TaskKind, Turn

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


def _req(**kw: object) -> GenRequest:
    base = dict(agent_id="a", task_id="t", system_prompt="persona", prompt="q",
                params=GenerationParams(max_tokens=96, seed=4))
    return GenRequest(**{**base, **kw})  # type: ignore[arg-type]


def test_utilization_is_the_budget_over_the_device() -> None:
    assert memory_utilization(None, 8192, 81920) == 0.1  # 8 GiB of an 80 GiB card
    assert memory_utilization(None, 8192, 4096) == MAX_UTIL  # a budget larger than the card
    assert memory_utilization(None, 64, 10**7) == MIN_UTIL
    assert memory_utilization(0.3, 8192, 81920) == 0.3  # configured wins


def test_memory_keeps_the_newest_turns_that_fit() -> None:
    turns = tuple(Turn(role="user" if i % 2 == 0 else "assistant", content="x" * 10) for i in range(6))
    kept = fit_memory(turns, len, budget=32)  # 15 tokens a turn with the template overhead
    assert kept == turns[-2:]
    assert fit_memory(turns, len, budget=0) == ()


def test_messages_are_persona_memory_prompt() -> None:
    turn = Turn(role="user", content="hi")
    msgs = chat_messages(_req(), (turn,))
    assert [m["role"] for m in msgs] == ["system", "user", "user"]
    assert msgs[0]["content"] == "persona" and msgs[-1]["content"] == "q"


def test_constraint_only_when_asked() -> None:
    assert constraint(_req(kind=TaskKind.JSON, json_schema=SCHEMA)) is None
    assert constraint(_req(kind=TaskKind.JSON, json_schema=SCHEMA, constrain=True)) == {"json": SCHEMA}
    labels = ("yes", "no")
    assert constraint(_req(kind=TaskKind.LABEL, labels=labels, constrain=True)) == {"choice": ["yes", "no"]}
    assert constraint(_req(kind=TaskKind.FREE, constrain=True)) is None


def test_answer_limit_is_cut_to_the_context_left() -> None:
    fields = sampling_fields(_req(), prompt_tokens=2000, n_ctx=2048)
    assert fields["max_tokens"] == 48 and fields["seed"] == 4
    assert sampling_fields(_req(), prompt_tokens=10, n_ctx=2048)["max_tokens"] == 96


def test_hit_rate_is_cached_over_prompt_tokens() -> None:
    stats = CacheStats()
    assert stats.hit_rate() == 0.0
    stats.prompt_tokens, stats.cached_tokens = 400, 100
    assert stats.as_dict()["prefix_cache_hit_rate"] == 0.25


def test_a_gguf_file_or_empty_folder_is_a_usage_error(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(UsageError, match="folder, not a file"):
        check_hf_dir(gguf)
    with pytest.raises(UsageError, match="no config.json"):
        check_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert check_hf_dir(tmp_path) == tmp_path
