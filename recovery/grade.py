"""The grader: after a task's terminal result exists, is its answer right? Pure.

The answer key (`Task.expected`) is for grading only. The Host, the monitor, the health score and
the policy never read it (a user has no key for real work); the grader fills the `correct` column
of results.parquet from it, with the matching rules the health score used before it lost the key:
a JSON answer must have every expected field (normalised), a label answer must name the expected
label, any other answer must contain the expected text as a phrase. No key: None.
"""

from __future__ import annotations

from agents.models import TaskKind
from recovery.health import extract_json, names, normalise


def _json_matches(text: str, expected: str) -> bool:
    want, got = extract_json(expected), extract_json(text)
    if not isinstance(want, dict) or not want:
        return normalise(text) == normalise(expected)
    return isinstance(got, dict) and all(
        normalise(str(got.get(k))) == normalise(str(v)) for k, v in want.items())


def grade(kind: TaskKind, text: str, expected: str | None) -> bool | None:
    """Whether `text` answers as the key says; None when there is no key."""
    if expected is None:
        return None
    if kind is TaskKind.JSON:
        return _json_matches(text, expected)
    if kind is TaskKind.LABEL:
        return names(expected, text)
    return f" {normalise(expected)} " in f" {normalise(text)} "
