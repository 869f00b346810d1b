"""Health score: each component on real examples, the weights, and the fault classification."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.config import HealthConfig, HealthWeights
from agents.errors import FaultClass, UsageError
from agents.models import TaskKind
from recovery.health import (
    coherence,
    completeness,
    consistency,
    extract_json,
    latency,
    memory,
    normalise,
    score,
)
from recovery.types import Signals

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
PROSE = (
    "Paris is the capital of France. It has been the seat of government since the tenth "
    "century and is by far the largest city in the country."
)
LOOP = "the the the the the the the the the the the the the the the the the the \x00\x01"


def sig(text: str = "Paris", **kw: Any) -> Signals:
    base: dict[str, Any] = {
        "text": text,
        "finish_reason": "stop",
        "kind": TaskKind.FREE,
        "elapsed_s": 1.0,
        "deadline_s": 30.0,
        "memory_headroom": 0.5,
    }
    return Signals(**(base | kw))


# --- coherence ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["positive", "Paris", "42", '{"name": "Ada", "age": 36}', '{"a": 1}', PROSE, "Yes."],
)
def test_ordinary_answers_are_fully_coherent(text: str) -> None:
    assert coherence(text) == 1.0


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_is_incoherent(text: str) -> None:
    assert coherence(text) == 0.0


@pytest.mark.parametrize(
    "text",
    [
        LOOP,
        "I think I think I think I think I think I think I think I think I think",
        "a" * 200,
        "ha" * 60,
        "!!!???###$$$%%%",
        "Pa\x00\x01\x02ris\x03",
    ],
)
def test_degenerate_text_is_below_the_floor(text: str) -> None:
    assert coherence(text) < HealthConfig().coherence_floor


def test_one_stray_control_character_is_penalised_not_fatal() -> None:
    value = coherence(PROSE + "\x07")
    assert HealthConfig().coherence_floor <= value < 1.0


def test_newlines_and_tabs_are_not_control_noise() -> None:
    assert coherence("name:\tAda\nage:\t36\r\n") == 1.0


@given(st.text(max_size=300))
def test_coherence_is_a_unit_value(text: str) -> None:
    assert 0.0 <= coherence(text) <= 1.0


# --- JSON extraction and normalisation ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": [1, 2]}\n```', {"a": [1, 2]}),
        ('Sure! Here it is: {"a": {"b": "x}"}} Hope that helps.', {"a": {"b": "x}"}}),
        ('Quote: {"s": "say \\"hi\\" {"} and more', {"s": 'say "hi" {'}),
        ('noise {not json} then {"k": 2}', {"k": 2}),
        ("[1, 2]", [1, 2]),
        ('{"a": 1', None),
        ("no json here", None),
        ("", None),
    ],
)
def test_extract_json(text: str, expected: object) -> None:
    assert extract_json(text) == expected


def test_normalise() -> None:
    assert normalise("  Positive! ") == "positive"
    assert normalise("New   York, NY.") == "new york ny"
    assert normalise("STRASSE") == normalise("straße")


# --- completeness ------------------------------------------------------------------------


def json_sig(text: str, **kw: Any) -> Signals:
    return sig(text, kind=TaskKind.JSON, json_schema=PERSON, **kw)


def test_valid_json_is_complete() -> None:
    assert completeness(json_sig('Here: ```json\n{"name": "Ada", "age": 36}\n```')) == 1.0


def test_invalid_json_gets_partial_credit_below_the_floor() -> None:
    wrong_type = completeness(json_sig('{"name": "Ada", "age": "old"}'))
    missing = completeness(json_sig('{"name": "Ada"}'))
    assert 0.0 < missing < wrong_type < HealthConfig().contract_floor


def test_unparseable_json_is_incomplete() -> None:
    assert completeness(json_sig('{"name": "Ada", "age": 3')) == 0.0
    assert completeness(json_sig("Ada, 36")) == 0.0


def test_a_bad_schema_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="schema"):
        completeness(sig('{"a": 1}', kind=TaskKind.JSON, json_schema={"type": "nonsense"}))


EVIL = "^(a+)+$"  # exponential on Python's backtracking `re`: 2^48 steps against the answer below


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "additionalProperties": {"type": "string", "pattern": EVIL}},
        {"type": "object", "patternProperties": {EVIL: {"type": "integer"}}},
        {"type": "object", "patternProperties": {EVIL: {}}, "additionalProperties": False},
        {"type": "object", "propertyNames": {"pattern": EVIL}},
    ],
)
def test_a_schemas_patterns_run_in_linear_time(schema: dict[str, Any]) -> None:
    evil = "a" * 48 + "b"
    answer = json.dumps({evil: evil})  # the one key and its value: nothing fails earlier
    started = time.perf_counter()
    report = score(sig(answer, kind=TaskKind.JSON, json_schema=schema), HealthConfig())
    assert time.perf_counter() - started < 1.0  # a guard; `re` would take days
    assert 0.0 <= report.completeness <= 1.0


def test_schema_patterns_run_on_re2() -> None:
    """RE2 syntax, not Python's: \\p{Lu} is a Unicode class there (a bad escape for `re`), and a
    backreference, which needs backtracking, is the schema's fault."""
    upper = {"type": "object", "properties": {"name": {"type": "string", "pattern": r"^\p{Lu}"}}}
    assert completeness(sig('{"name": "Ana"}', kind=TaskKind.JSON, json_schema=upper)) == 1.0
    assert completeness(sig('{"name": "ana"}', kind=TaskKind.JSON, json_schema=upper)) < 0.5
    backref = {"type": "object", "properties": {"s": {"type": "string", "pattern": r"(a)\1"}}}
    with pytest.raises(UsageError, match="not supported"):
        completeness(sig('{"s": "aa"}', kind=TaskKind.JSON, json_schema=backref))


def test_the_tasks_pattern_is_part_of_the_contract_for_any_kind() -> None:
    shape = r"^[A-Z][a-z]+$"
    assert completeness(sig("Lima", kind=TaskKind.ANSWER, pattern=shape)) == 1.0
    assert completeness(sig(" Lima\n", kind=TaskKind.ANSWER, pattern=shape)) == 1.0
    assert completeness(sig("lima is the capital", kind=TaskKind.ANSWER, pattern=shape)) == 0.0
    assert completeness(sig("Lima", kind=TaskKind.FREE, pattern=EVIL)) == 0.0
    assert completeness(sig('{"name": "Ada", "age": 3}', kind=TaskKind.JSON, json_schema=PERSON,
                            pattern=r"^\{")) == 1.0
    report = score(sig("a" * 48 + "b", kind=TaskKind.ANSWER, pattern=EVIL), HealthConfig())
    assert report.fault is FaultClass.CONTRACT


def label_sig(text: str) -> Signals:
    return sig(text, kind=TaskKind.LABEL, labels=("positive", "negative", "neutral"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("positive", 1.0),
        (" Positive. ", 1.0),
        ("The review is negative overall.", 0.6),
        ("positive or negative, hard to say", 0.0),
        ("mixed", 0.0),
        ("positively", 0.0),
    ],
)
def test_label(text: str, expected: float) -> None:
    assert completeness(label_sig(text)) == expected


def test_a_short_answer_with_no_format_has_no_contract_but_its_length_limit() -> None:
    assert completeness(sig("Lyon", kind=TaskKind.ANSWER)) == 1.0  # right or wrong: the grader's
    assert completeness(sig("x" * 41, kind=TaskKind.ANSWER, max_chars=40)) == 0.0
    assert completeness(sig("x" * 40, kind=TaskKind.ANSWER, max_chars=40)) == 1.0


def test_free_needs_text() -> None:
    assert completeness(sig("anything")) == 1.0
    assert completeness(sig("  ")) == 0.0


def test_cut_off_answer_is_capped() -> None:
    assert completeness(json_sig('{"name": "Ada", "age": 36}', finish_reason="length")) == 0.3


def test_engine_fault_zeroes_text_components() -> None:
    report = score(sig("Paris", fault=FaultClass.CRASH), HealthConfig())
    assert report.completeness == report.coherence == 0.0
    assert report.fault is FaultClass.CRASH
    assert not report.healthy


# --- latency, memory, consistency --------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "expected"), [(0.0, 1.0), (15.0, 1.0), (22.5, 0.5), (30.0, 0.0), (45.0, 0.0)]
)
def test_latency(elapsed: float, expected: float) -> None:
    assert latency(elapsed, 30.0) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("headroom", "expected"), [(-0.1, 0.0), (0.0, 0.0), (0.125, 0.5), (0.25, 1.0), (0.9, 1.0)]
)
def test_memory(headroom: float, expected: float) -> None:
    assert memory(headroom) == pytest.approx(expected)


def test_consistency_without_others_is_full() -> None:
    assert consistency(sig("Paris")) == 1.0


def test_consistency_counts_agreeing_peers_and_past() -> None:
    agreeing = sig("Paris.", peers=("paris", "PARIS!", "Lyon"), own_past=("Paris",))
    assert consistency(agreeing) == 0.75
    assert consistency(sig("Paris", peers=("Lyon", "Nice"))) == 0.0


def test_consistency_skips_failed_peers() -> None:
    assert consistency(sig("Paris", peers=("", "Paris"))) == 1.0


def test_json_consistency_compares_objects() -> None:
    peers = ('{"age": 36, "name": "Ada"}', 'Sure: {"name":"Ada","age":36}', '{"name": "Bob"}')
    assert consistency(json_sig('{"name": "Ada", "age": 36}', peers=peers)) == pytest.approx(2 / 3)


# --- score and classification ------------------------------------------------------------


def test_perfect_step_is_healthy() -> None:
    report = score(sig("Paris"), HealthConfig())
    assert report.score == pytest.approx(1.0)
    assert report.healthy and report.fault is FaultClass.NONE
    assert report.reason == "ok"


def test_weights_come_from_config() -> None:
    signals = sig("Paris", memory_headroom=0.0)  # memory 0, everything else 1
    default = score(signals, HealthConfig())
    assert default.score == pytest.approx(0.75)
    light = HealthWeights(
        coherence=0.3, completeness=0.3, latency=0.2, memory=0.05, consistency=0.15
    )
    assert score(signals, HealthConfig(weights=light)).score == pytest.approx(0.95)


def test_weighted_sum_of_components() -> None:
    cfg = HealthConfig()
    report = score(sig("Paris", elapsed_s=22.5, peers=("Paris", "Lyon")), cfg)
    expected = sum(cfg.weights.as_dict()[k] * v for k, v in report.components().items())
    assert report.score == pytest.approx(expected)
    assert report.latency == pytest.approx(0.5) and report.consistency == 0.5


@pytest.mark.parametrize(
    ("signals", "fault"),
    [
        (sig("ok", fault=FaultClass.OOM), FaultClass.OOM),
        (json_sig('{"name": "Ada", "ag', finish_reason="length"), FaultClass.TRUNCATED),
        (sig(LOOP, finish_reason="length"), FaultClass.TRUNCATED),
        (sig(LOOP), FaultClass.GARBAGE),
        (json_sig('{"name": "Ada"}'), FaultClass.CONTRACT),
        (label_sig("mixed"), FaultClass.CONTRACT),
        (sig("Paris", elapsed_s=31.0), FaultClass.NONE),  # late, not wrong: DEGRADED by its score
        (sig("Paris", fault=FaultClass.TIMEOUT), FaultClass.TIMEOUT),
        (sig("Paris", memory_headroom=0.0), FaultClass.OOM),
        (sig("Paris", memory_headroom=-0.2), FaultClass.OOM),
        (sig("Paris"), FaultClass.NONE),
    ],
)
def test_fault_classification(signals: Signals, fault: FaultClass) -> None:
    assert score(signals, HealthConfig()).fault is fault


def test_cut_off_text_is_truncated_unless_the_floor_allows_it() -> None:
    # completeness is capped at 0.3 < floor: a cut-off answer is always TRUNCATED by default
    assert score(sig(PROSE, finish_reason="length"), HealthConfig()).fault is FaultClass.TRUNCATED
    lenient = HealthConfig(contract_floor=0.2)
    assert score(sig(PROSE, finish_reason="length"), lenient).fault is FaultClass.NONE


def test_no_fault_but_below_the_bar_is_unhealthy() -> None:
    report = score(sig("Paris", peers=("Lyon",) * 3, elapsed_s=29.0), HealthConfig())
    assert report.fault is FaultClass.NONE and not report.healthy
    assert "consistency=0.00" in report.reason and "latency" in report.reason


def test_reason_names_weak_components() -> None:
    report = score(sig(LOOP), HealthConfig())
    assert report.reason.startswith("garbage")
    assert "coherence=0.00" in report.reason


@given(
    text=st.text(max_size=200),
    kind=st.sampled_from(list(TaskKind)),
    finish=st.sampled_from(["stop", "length", "error"]),
    elapsed=st.floats(0, 100),
    headroom=st.floats(-1, 1),
    fault=st.sampled_from(list(FaultClass)),
    peers=st.lists(st.text(max_size=20), max_size=3),
)
def test_report_is_bounded_and_consistent(
    text: str,
    kind: TaskKind,
    finish: str,
    elapsed: float,
    headroom: float,
    fault: FaultClass,
    peers: list[str],
) -> None:
    signals = replace(
        sig(text, kind=kind, finish_reason=finish, elapsed_s=elapsed, memory_headroom=headroom),
        json_schema=PERSON,
        labels=("yes", "no"),
        peers=tuple(peers),
        fault=fault,
    )
    report = score(signals, HealthConfig())
    assert 0.0 <= report.score <= 1.0
    assert all(0.0 <= v <= 1.0 for v in report.components().values())
    assert report.healthy == (report.fault is FaultClass.NONE and report.score >= 0.75)
    if fault is not FaultClass.NONE:
        assert report.fault is fault
