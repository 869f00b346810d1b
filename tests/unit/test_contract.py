"""The contract's checker: RE2 for every pattern, one-line problems for schemas it cannot run."""

from __future__ import annotations

from typing import Any

import pytest

from agents.errors import UsageError
from recovery import contract
from recovery.contract import conforms, pattern_problem, schema_problem, search, validator_class

PERSON: dict[str, Any] = {"type": "object", "properties": {"name": {"type": "string"}},
                          "required": ["name"]}


@pytest.mark.parametrize("draft", [None, "http://json-schema.org/draft-04/schema#",
                                   "http://json-schema.org/draft-07/schema#",
                                   "https://json-schema.org/draft/2020-12/schema"])
def test_every_drafts_pattern_keywords_are_the_re2_ones(draft: str | None) -> None:
    schema = {"$schema": draft} if draft else {}
    keywords = validator_class(schema).VALIDATORS  # type: ignore[attr-defined]
    assert keywords["pattern"] is contract._pattern
    assert keywords["patternProperties"] is contract._pattern_properties
    assert keywords["additionalProperties"] is contract._additional_properties


@pytest.mark.parametrize(
    "schema",
    [PERSON, {"type": "string", "pattern": r"^\p{L}+$"}, {"enum": [{"pattern": r"(a)\1"}]},
     {"type": "object", "patternProperties": {"^x-": {"type": "integer"}},
      "additionalProperties": False},
     {"properties": {"pattern": {"type": "string"}}}],
)
def test_sound_schemas_have_no_problem(schema: dict[str, Any]) -> None:
    assert schema_problem(schema) is None


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "nonsense"}, "not a valid JSON schema at type"),
        ({"properties": {"a": {"type": "string", "pattern": r"(a)\1"}}}, "backreferences"),
        ({"type": "string", "pattern": "(?=a)b"}, "not supported"),
        ({"patternProperties": {"(?<=x)y": {}}}, "not supported"),
        ({"type": "string", "pattern": "a{1000}{1000}"}, "not supported"),
        ({"patternProperties": {"^a": {}}, "unevaluatedProperties": False}, "unevaluatedProperties"),
        ({"$ref": "#"}, "recurses"),
        ({"$ref": "https://example.com/schema"}, "does not resolve"),
    ],
)
def test_problem_schemas_get_one_line(schema: dict[str, Any], words: str) -> None:
    problem = schema_problem(schema)
    assert problem is not None and words in problem and "\n" not in problem, problem
    with pytest.raises(UsageError):
        conforms(schema, {"a": "aa"})


def test_patterns() -> None:
    assert pattern_problem(r"^[A-Z][a-z]+$") is None
    assert "not supported" in (pattern_problem(r"(\w)\1") or "")
    assert search(r"^[A-Z][a-z]+$", "Lima") and not search(r"^[A-Z][a-z]+$", "lima")
    assert search("a", "a\ud800")  # a lone surrogate from JSON does not break the check
    with pytest.raises(UsageError):
        search(r"(a)\1", "aa")


def test_additional_properties_still_validate() -> None:
    schema = {"type": "object", "properties": {"id": {}}, "patternProperties": {"^x-": {"type": "integer"}},
              "additionalProperties": False}
    assert conforms(schema, {"id": 1, "x-a": 2})
    assert not conforms(schema, {"id": 1, "x-a": "two"})
    assert not conforms(schema, {"id": 1, "other": 2})
    typed = {"type": "object", "additionalProperties": {"type": "string"}}
    assert conforms(typed, {"a": "b"}) and not conforms(typed, {"a": 1})


def test_a_task_whose_pattern_re2_refuses_is_invalid() -> None:
    from pydantic import ValidationError

    from agents.models import Task

    assert Task(task_id="t", agent_id="a", prompt="p", pattern=r"^\p{Lu}").pattern == r"^\p{Lu}"
    with pytest.raises(ValidationError, match="not supported"):
        Task(task_id="t", agent_id="a", prompt="p", pattern=r"(a)\1")
