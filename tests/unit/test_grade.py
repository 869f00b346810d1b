"""The grader: the answer key grades a result after the fact; the monitor never sees it."""

from __future__ import annotations

import dataclasses

import pytest

from agents.models import TaskKind
from recovery.grade import grade
from recovery.types import Signals

PERSON = '{"name": "Kenji Haddad", "age": 19}'


@pytest.mark.parametrize(
    ("text", "right"),
    [("The capital is Paris.", True), ("paris", True), ("Lyon", False), ("Parisian", False)],
)
def test_a_short_answer_must_contain_the_key_as_a_phrase(text: str, right: bool) -> None:
    assert grade(TaskKind.ANSWER, text, "Paris") is right


def test_a_json_answer_must_have_every_expected_field() -> None:
    assert grade(TaskKind.JSON, '{"name": "kenji haddad", "age": 19}', PERSON) is True
    assert grade(TaskKind.JSON, '{"name": "Kenji Haddad", "age": 20}', PERSON) is False
    assert grade(TaskKind.JSON, "not json", PERSON) is False


def test_a_label_answer_must_name_the_expected_label() -> None:
    assert grade(TaskKind.LABEL, "negative", "negative") is True
    assert grade(TaskKind.LABEL, "positive", "negative") is False


def test_no_key_no_grade() -> None:
    assert grade(TaskKind.FREE, "anything", None) is None


def test_the_monitors_signals_have_no_field_for_the_key() -> None:
    assert "expected" not in {f.name for f in dataclasses.fields(Signals)}


def test_the_summary_sets_the_monitors_verdict_against_the_graders() -> None:
    from pool.driver.summary import summarise

    def row(status: str, correct: bool | None) -> dict:
        return {"status": status, "correct": correct, "tiers": [], "elapsed_s": 1.0, "attempts": 1,
                "tokens": 10}

    rows = [row("succeeded", True), row("succeeded", False), row("failed", True),
            row("failed", False), row("succeeded", None), row("rejected", None)]
    s = summarise(rows, [{"event": "agent.kv_dropped"}, {"event": "pool.parked"}], 1.0)
    assert s["kv_dropped"] == 1
    assert (s["graded"], s["correct"], s["false_positive_failures"], s["false_negatives"]) == (4, 2, 1, 1)
    assert s["correct_rate"] == 0.5 and s["succeeded"] == 3
