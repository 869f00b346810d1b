"""The llama.cpp engine on the shipped SmolLM2-135M model: real generations, grammars, KV reuse."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from llama_cpp import llama_cpp as C

from agents.config import EngineConfig
from agents.engines.base import Engine, GenRequest
from agents.engines.llama_cpp import LlamaCppEngine, label_grammar, schema_grammar
from agents.errors import EngineFault, FaultClass, UsageError
from agents.models import GenerationParams, TaskKind, Turn

pytestmark = pytest.mark.llama

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "city": {"type": "string"},
        "amount": {"type": "number"},
    },
    "required": ["name", "city", "amount"],
}
LABELS = ("positive", "negative")
MEMORY = (
    Turn(role="user", content="My name is Ana and I live in Lisbon. I like cats and river walks."),
    Turn(role="assistant", content="Nice to meet you, Ana! Lisbon is a lovely city for walks."),
    Turn(role="user", content="I work as a nurse at the city hospital and I have two kids."),
    Turn(role="assistant", content="That sounds busy and rewarding."),
)


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    eng = LlamaCppEngine(EngineConfig(), n_threads=2)
    yield eng
    eng.close()


def _req(agent: str, prompt: str, **kw: Any) -> GenRequest:
    params = GenerationParams(temperature=0.7, top_p=0.95, max_tokens=48, seed=1)
    base = GenRequest(agent, "t-1", "You are a brief assistant.", prompt, params)
    return dataclasses.replace(base, **kw)


def _prompt_evals(engine: LlamaCppEngine) -> int:
    return int(C.llama_perf_context(engine.llm.ctx).n_p_eval)


def test_answers_a_real_prompt(engine: LlamaCppEngine) -> None:
    assert isinstance(engine, Engine)
    res = engine.generate(_req("agent-a", "What is the capital of France? Answer with one word."))
    assert res.text.strip()
    assert res.prompt_tokens > 0 and res.completion_tokens > 0
    assert res.finish_reason in ("stop", "length") and res.elapsed_s > 0


def test_schema_constrained_output_validates(engine: LlamaCppEngine) -> None:
    prompt = "Maria Lopez paid 45 dollars in Madrid on 2024-03-12. Give name, city, amount as JSON."
    req = _req(
        "agent-j",
        prompt,
        kind=TaskKind.JSON,
        json_schema=SCHEMA,
        constrain=True,
        params=GenerationParams(temperature=0.7, top_p=0.95, max_tokens=160, seed=3),
    )
    res = engine.generate(req)
    assert res.finish_reason == "stop"
    jsonschema.validate(json.loads(res.text), SCHEMA)


def test_label_constrained_output_is_one_label(engine: LlamaCppEngine) -> None:
    prompt = "I loved this film. Answer with one word: positive or negative."
    for seed in range(3):
        params = GenerationParams(temperature=1.0, top_p=1.0, max_tokens=16, seed=seed)
        req = _req(
            "agent-l", prompt, kind=TaskKind.LABEL, labels=LABELS, constrain=True, params=params
        )
        assert engine.generate(req).text in LABELS


def test_label_grammar_escapes_quotes() -> None:
    assert label_grammar(("a", 'say "hi"')) == 'root ::= "a" | "say \\"hi\\""'


def test_schema_grammar_keeps_control_characters_out_of_strings() -> None:
    gbnf = schema_grammar(json.dumps(SCHEMA))
    assert r'char ::= [^"\\\x7F\x00-\x1F]' in gbnf


def test_unparseable_grammar_is_refused_not_a_segfault(engine: LlamaCppEngine) -> None:
    with pytest.raises(ValueError, match="cannot parse"):
        engine._grammar("root ::= ((")


def test_kv_snapshot_restores_the_prefix_in_a_new_engine(engine: LlamaCppEngine) -> None:
    first = engine.generate(_req("agent-kv", "Where do I live?", memory=MEMORY))
    blob = engine.save_state("agent-kv")
    assert blob is not None and first.prompt_tokens > 50
    fresh = LlamaCppEngine(EngineConfig(), n_threads=2)
    try:
        greedy = GenerationParams(temperature=0.0, top_p=1.0, max_tokens=16, seed=0)
        ask = _req("agent-kv", "What is my job?", memory=MEMORY, params=greedy)
        cold = fresh.generate(ask)
        assert fresh.load_state("agent-kv", blob)
        before = _prompt_evals(fresh)
        warm = fresh.generate(ask)
        evaluated = _prompt_evals(fresh) - before
    finally:
        fresh.close()
    assert cold.cached_tokens == 0
    assert warm.cached_tokens > 50  # persona + memory came from the snapshot
    assert evaluated == warm.prompt_tokens - warm.cached_tokens < cold.prompt_tokens
    assert warm.text == cold.text  # same seed, same context: the restored KV is faithful


def test_kv_snapshot_survives_another_agents_turn(engine: LlamaCppEngine) -> None:
    engine.generate(_req("agent-x", "Where do I live?", memory=MEMORY))
    blob = engine.save_state("agent-x")
    engine.generate(_req("agent-y", "Say hi like a pirate.", system_prompt="You are a pirate."))
    assert engine.save_state("agent-x") == blob  # stashed when agent-y took the context
    assert blob is not None and engine.load_state("agent-x", blob)
    res = engine.generate(_req("agent-x", "Do I have kids?", memory=MEMORY))
    assert res.cached_tokens > 50


def test_foreign_or_broken_snapshot_is_refused(engine: LlamaCppEngine) -> None:
    assert not engine.load_state("agent-z", b"not a snapshot")
    assert engine.save_state("never-seen") is None


def test_memory_is_trimmed_to_the_token_budget() -> None:
    eng = LlamaCppEngine(EngineConfig(memory_tokens=40), n_threads=2)
    try:
        kept = eng._fit_memory(MEMORY)
    finally:
        eng.close()
    assert kept and kept == MEMORY[len(MEMORY) - len(kept) :] and len(kept) < len(MEMORY)


def test_missing_model_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.gguf"
    with pytest.raises(UsageError, match=str(path)):
        LlamaCppEngine(EngineConfig(model_path=path))


def test_non_gguf_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(UsageError, match=str(path)):
        LlamaCppEngine(EngineConfig(model_path=path))


def test_context_overflow_is_an_oom_fault(engine: LlamaCppEngine) -> None:
    huge = "word " * 3000  # about 3000 tokens against n_ctx 2048
    with pytest.raises(EngineFault) as info:
        engine.generate(_req("agent-o", huge))
    assert info.value.fault is FaultClass.OOM
    assert "context overflow" in str(info.value)
    assert engine.generate(_req("agent-o", "Say ok.")).text  # the engine still works
