"""The llama.cpp server engine (xllamacpp) on the shipped SmolLM2-135M model: real generations,
batching of many slots, slot save/restore, the memory model against llama.cpp's own figures."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agents.config import EngineConfig
from agents.engines.base import GenRequest
from agents.engines.gpumem import MIB
from agents.engines.llama_server import MISSING, LlamaServerCore, label_grammar
from agents.engines.memory import read_shape
from agents.engines.snapshot import new_id, pack, reference
from agents.errors import EngineFault, FaultClass, UsageError
from agents.models import GenerationParams, TaskKind, Turn

pytestmark = pytest.mark.llama

SLOTS, CTX = 12, 512
PARIS = "What is the capital of France? Answer with one word."
GREEDY = GenerationParams(temperature=0.0, max_tokens=16, seed=0)
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "city": {"type": "string"},
                   "amount": {"type": "number"}},
    "required": ["name", "city", "amount"],
}
MEMORY = (
    Turn(role="user", content="My name is Ana and I live in Lisbon. I like cats and river walks."),
    Turn(role="assistant", content="Nice to meet you, Ana! Lisbon is a lovely city for walks."),
    Turn(role="user", content="I work as a nurse at the city hospital and I have two kids."),
    Turn(role="assistant", content="That sounds busy and rewarding."),
)


@pytest.fixture(scope="module")
def core() -> Iterator[LlamaServerCore]:
    # no host-RAM prompt cache: these tests measure what a slot itself holds
    eng = LlamaServerCore(EngineConfig(n_ctx=CTX, prompt_cache_mib=0), slots=SLOTS, n_threads=2)
    yield eng
    eng.close()


def _req(prompt: str, **kw: Any) -> GenRequest:
    params = GenerationParams(temperature=0.7, top_p=0.95, max_tokens=24, seed=1)
    return dataclasses.replace(GenRequest("agent-a", "t-1", "You are a brief assistant.", prompt,
                                          params), **kw)


def test_answers_a_real_prompt(core: LlamaServerCore) -> None:
    res = core.generate(_req(PARIS, params=GREEDY), slot=0)
    assert "paris" in res.text.lower()
    assert res.prompt_tokens > 10 and res.completion_tokens > 0
    assert core.tokens[0] == res.prompt_tokens + res.completion_tokens


def test_twelve_slots_at_once_are_decoded_in_one_batch(core: LlamaServerCore) -> None:
    before = core.metrics()
    results: dict[int, Any] = {}

    def ask(k: int) -> None:
        results[k] = core.generate(_req(f"Count from {k} to {k + 20}.",
                                        params=GenerationParams(max_tokens=16, seed=k)), slot=k)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(SLOTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    after = core.metrics()
    assert len(results) == SLOTS
    predicted = after["tokens_predicted_total"] - before["tokens_predicted_total"]
    decodes = after["n_decode_total"] - before["n_decode_total"]
    assert predicted >= SLOTS * 8
    # One decode call per generated token would be `predicted`; batched slots share calls.
    assert decodes < predicted / 3, (decodes, predicted)


def test_slot_save_restore_round_trips_and_cuts_prompt_evaluation(core: LlamaServerCore) -> None:
    req = _req("Where do I live? Answer in a few words.", memory=MEMORY,
               params=GenerationParams(temperature=0.0, max_tokens=12, seed=3))
    first = core.generate(req, slot=1)
    blob = core.save_slot(1)
    assert blob is not None and len(blob) > 1000
    assert core.restore_slot(1, None) == 0  # the slot is empty now
    cold = core.generate(req, slot=1)
    assert cold.extra["prompt_evaluated"] >= first.prompt_tokens - 1, "nothing to reuse after an erase"
    assert core.restore_slot(2, blob) == first.prompt_tokens + first.completion_tokens - 1
    warm = core.generate(req, slot=2)
    assert warm.extra["prompt_evaluated"] <= 2, warm.extra  # persona + memory came from the snapshot
    assert warm.text == first.text  # same KV, temperature 0: same answer


def test_a_reference_restores_the_engines_kept_copy_and_a_forgotten_one_says_so(
    core: LlamaServerCore,
) -> None:
    req = _req("Where do I work? Answer in a few words.", memory=MEMORY,
               params=GenerationParams(temperature=0.0, max_tokens=12, seed=3))
    first = core.generate(req, slot=6)
    ref = reference(core.save_slot(6) or b"")
    assert ref is not None and len(ref) < 100, "the engine keeps a copy: a reference stands for it"
    assert core.restore_slot(7, ref) == first.prompt_tokens + first.completion_tokens - 1
    warm = core.generate(req, slot=7)
    assert warm.extra["prompt_evaluated"] <= 2, warm.extra  # persona + memory from the copy
    forgotten = pack(new_id(), True, core._tag, b"")  # evicted, or saved by an engine now gone
    assert core.restore_slot(7, forgotten) == MISSING and core.tokens[7] == 0


def test_slot_actions_of_different_slots_do_not_wait_for_each_other(
    core: LlamaServerCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A swap of agents on one slot must not queue behind the swaps of the others: the actions of
    # slot 4 are held until slot 5's action has started, which a lock over all slots forbids.
    for slot in (4, 5):
        core.generate(_req("Say hi."), slot=slot)
    real, started = core._action, {4: threading.Event(), 5: threading.Event()}

    def action(slot: int, what: str, filename: str | None = None) -> dict[str, Any]:
        started[slot].set()
        if slot == 4:
            assert started[5].wait(10), "slot 5's action waited for slot 4's"
        return real(slot, what, filename)

    monkeypatch.setattr(core, "_action", action)
    with ThreadPoolExecutor(2) as ex:
        blobs = list(ex.map(core.save_slot, (4, 5)))
    assert all(b is not None for b in blobs)
    with ThreadPoolExecutor(2) as ex:
        restored = list(ex.map(core.restore_slot, (4, 5), blobs))
    assert min(restored) > 0


def test_a_foreign_or_torn_snapshot_empties_the_slot_instead_of_loading(core: LlamaServerCore) -> None:
    core.generate(_req("Say hi."), slot=3)
    assert core.restore_slot(3, b"SHKV\x03\x00garbage") == 0
    assert core.tokens[3] == 0


def test_kv_bytes_per_token_match_llamas_own_kv_buffer(core: LlamaServerCore) -> None:
    shape = read_shape(core.model_path)
    ours = SLOTS * CTX * shape.kv_bytes_per_token() / MIB
    reported = core.info()["reported"]["kv_mib"]  # llama.cpp's own log of its KV buffer
    assert reported > 0 and abs(ours - reported) / reported < 0.05, (ours, reported)
    assert core.info()["base_mib"] >= shape.weights_bytes / MIB  # weights once, plus compute


def test_schema_constrained_json_validates(core: LlamaServerCore) -> None:
    req = _req("Ana from Lisbon paid 12.5 euros. Give her as JSON.", kind=TaskKind.JSON,
               json_schema=SCHEMA, constrain=True,
               params=GenerationParams(temperature=0.0, max_tokens=64, seed=0))
    import json

    jsonschema.validate(json.loads(core.generate(req, slot=4).text), SCHEMA)


def test_label_grammar_gives_one_label(core: LlamaServerCore) -> None:
    assert label_grammar(("yes", "no")) == 'root ::= "yes" | "no"'
    req = _req("Is the sky blue?", kind=TaskKind.LABEL, labels=("yes", "no"), constrain=True)
    assert core.generate(req, slot=5).text in {"yes", "no"}


def test_a_context_overflow_is_an_oom_fault_and_a_bad_slot_a_usage_error(core: LlamaServerCore) -> None:
    with pytest.raises(EngineFault) as err:
        core.generate(_req("hello " * (CTX + 50)), slot=6)
    assert err.value.fault is FaultClass.OOM
    with pytest.raises(UsageError, match="slot 12 out of range"):
        core.generate(_req("hi"), slot=SLOTS)


def test_a_missing_or_non_gguf_model_is_a_one_line_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="No such file"):
        LlamaServerCore(EngineConfig(model_path=tmp_path / "nope.gguf"), slots=1)
    text = tmp_path / "model.gguf"
    text.write_text("not a model")
    with pytest.raises(UsageError, match="not a GGUF file"):
        LlamaServerCore(EngineConfig(model_path=text), slots=1)


def test_engine_answers_while_a_second_engine_starts_elsewhere(core: LlamaServerCore) -> None:
    """The log tap is per process: a second engine in it keeps its own breakdown."""
    t0 = time.perf_counter()
    other = LlamaServerCore(EngineConfig(n_ctx=256), slots=1, n_threads=1)
    try:
        assert other.info()["reported"]["kv_mib"] == pytest.approx(256 * 23040 / MIB, rel=0.01)
        assert other.load_s < time.perf_counter() - t0 + 1
        assert "paris" in core.generate(_req(PARIS, params=GREEDY), slot=7).text.lower()
    finally:
        other.close()


def test_a_prefix_one_slot_evaluated_is_not_evaluated_again_in_another() -> None:
    # Agents share personas and task templates: llama-server's host-RAM prompt cache (on by
    # default) holds what a slot evaluated once that slot moves on, and a slot about to drop most
    # of its context for a new prompt takes the cached prefix that matches it best.
    eng = LlamaServerCore(EngineConfig(n_ctx=CTX), slots=2, n_threads=2)
    try:
        template = "Classify the topic of this headline. Answer with one word: sport, politics or science. "
        first = eng.generate(_req(template + "Headline: The home team won the cup final.", params=GREEDY), 0)
        unrelated = _req("Name three red fruits and three yellow ones, one per line.", params=GREEDY)
        eng.generate(unrelated, 0)  # slot 0 moves on: its prompt goes to the cache
        eng.generate(unrelated, 1)  # slot 1 holds something else
        other = eng.generate(_req(template + "Headline: Parliament passed the budget.", params=GREEDY), 1)
        assert other.cached_tokens > first.prompt_tokens // 2, (other.cached_tokens, first.prompt_tokens)
        assert other.extra["prompt_evaluated"] < first.extra["prompt_evaluated"] // 2
    finally:
        eng.close()
