"""Health score: one execution's signals -> a `HealthReport`.

Theory of operation. Five components, each a pure function returning a float in [0, 1], are
weighted by `HealthConfig.weights` into one score. Coherence looks only at the text (is it
degenerate?); completeness checks the contract a user can write (schema, label set, length limit, shape,
not cut off; never the answer key, which only the grader in `recovery.grade` reads); latency and
memory read the step's elapsed time and the VRAM headroom; consistency compares the answer with
peers' and the agent's own earlier answers. The fault class is then picked by fixed rules, first
match wins: an engine exception names its own fault, otherwise a cut-off answer that misses its
contract is TRUNCATED, a degenerate one GARBAGE, one that misses its contract CONTRACT, one that
left no memory OOM. A late but good answer is not a fault: its latency component lowers the score
(DEGRADED); only an engine that gave up raises TIMEOUT. Floors on coherence and completeness make a
fault out of a bad component whatever the weighted score says. No I/O, no clock: time arrives as
numbers inside `Signals`.
"""

from __future__ import annotations

import json
import re
import unicodedata
import zlib
from collections.abc import Sequence
from typing import Any

from agents.config import HealthConfig
from agents.errors import FaultClass
from agents.models import TaskKind
from recovery.contract import conforms, search
from recovery.types import HealthReport, Signals

_ALLOWED_CONTROL = frozenset("\n\t\r")
_JSON_PUNCTUATION = frozenset('{}[]":,')  # neutral for the letter share: small JSON is coherent
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_NON_WORD = re.compile(r"[\W_]+")
_WORD = re.compile(r"\w+")
_MIN_COMPRESSIBLE = 60  # shorter texts compress badly whatever they say
_TRUNCATED_CAP = 0.3  # a cut-off answer is at most this complete
# Partial credit of JSON that parses but fails its schema, times the share of required keys
# present. Kept under 0.5 so that, with the default contract_floor of 0.5, an invalid answer is
# always a CONTRACT fault even when every required key is there.
_INVALID_JSON_CREDIT = 0.45
_LABEL_IN_TEXT = 0.6  # exactly one label named somewhere in a longer answer
_FULL_MEMORY_HEADROOM = 0.25  # headroom at which memory is fully healthy


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def normalise(text: str) -> str:
    """Casefolded, every run of punctuation/whitespace as one space, stripped."""
    return _NON_WORD.sub(" ", text.casefold()).strip()


# --- coherence -----------------------------------------------------------------------------


def _is_control(ch: str) -> bool:
    if ch == "\ufffd":  # replacement character: bytes that did not decode
        return True
    return unicodedata.category(ch) == "Cc" and ch not in _ALLOWED_CONTROL


def _control_factor(text: str) -> float:
    bad = sum(1 for ch in text if _is_control(ch))
    if bad == 0:
        return 1.0
    return _clamp(0.7 - 5.0 * bad / len(text))


def _repeat_factor(text: str) -> float:
    words = _WORD.findall(text.casefold())
    grams = list(zip(words, words[1:], words[2:], strict=False))
    if len(grams) < 2:
        return 1.0
    duplicate_share = 1.0 - len(set(grams)) / len(grams)
    return _clamp(1.0 - 1.5 * duplicate_share)


def _compression_factor(text: str) -> float:
    data = text.encode()
    if len(data) <= _MIN_COMPRESSIBLE:
        return 1.0
    ratio = len(zlib.compress(data, 9)) / len(data)
    return _clamp((ratio - 0.05) / 0.20)  # prose compresses to ~0.4-0.9, loops to < 0.2


def _letter_factor(text: str) -> float:
    chars = [ch for ch in text if not ch.isspace() and ch not in _JSON_PUNCTUATION]
    if not chars:
        return 1.0
    share = sum(ch.isalnum() for ch in chars) / len(chars)
    return _clamp(share / 0.5)


def coherence(text: str) -> float:
    """1.0 for ordinary text (however short); lower for empty, looping or symbol soup."""
    if not text.strip():
        return 0.0
    return (
        _control_factor(text)
        * _repeat_factor(text)
        * _compression_factor(text)
        * _letter_factor(text)
    )


# --- completeness --------------------------------------------------------------------------


def _loads(text: str) -> object | None:
    try:
        parsed: object = json.loads(text)
    except ValueError:
        return None
    return parsed


def _balanced_end(text: str, start: int) -> int | None:
    """Index of the brace closing the one at `start`, skipping braces inside strings."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if escaped:
            escaped = False
        elif in_string:
            escaped = ch == "\\"
            in_string = ch != '"'
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def extract_json(text: str) -> object | None:
    """The JSON in an answer: a whole-text object/array, else the first balanced `{...}`.

    Accepts ```json fences and prose around the object; None when nothing parses.
    """
    fenced = _FENCE.search(text)
    body = (fenced.group(1) if fenced else text).strip()
    whole = _loads(body)
    if isinstance(whole, dict | list):
        return whole
    start = body.find("{")
    while start != -1:
        end = _balanced_end(body, start)
        if end is None:
            return None  # unbalanced from here on: every later '{' sits inside this one
        candidate = _loads(body[start : end + 1])
        if isinstance(candidate, dict):
            return candidate
        start = body.find("{", start + 1)
    return None


def _json_completeness(text: str, schema: dict[str, Any] | None) -> float:
    instance: Any = extract_json(text)  # jsonschema types its instances as JSON values
    if instance is None:
        return 0.0
    if schema is None:
        return 1.0
    if conforms(schema, instance):
        return 1.0
    required = schema.get("required", [])
    if not required or not isinstance(instance, dict):
        return 0.0
    present = sum(1 for key in required if key in instance)
    return _INVALID_JSON_CREDIT * present / len(required)


def names(label: str, text: str) -> bool:
    pattern = r"(?<!\w)" + re.escape(normalise(label)) + r"(?!\w)"
    return re.search(pattern, normalise(text)) is not None


def _label_completeness(text: str, labels: tuple[str, ...]) -> float:
    answer = normalise(text)
    if sum(answer == normalise(label) for label in labels) == 1:
        return 1.0
    if sum(names(label, text) for label in labels) == 1:
        return _LABEL_IN_TEXT
    return 0.0


def _contract(signals: Signals) -> float:
    """The contract a user can write without knowing the answer: the JSON schema, the label
    set, a length limit, the answer's shape (a pattern). A free or short answer with no format
    has none: any text meets it. Patterns run on RE2 (`recovery.contract`): linear time."""
    text = signals.text
    if signals.max_chars is not None and len(text.strip()) > signals.max_chars:
        return 0.0
    if signals.pattern is not None and not search(signals.pattern, text.strip()):
        return 0.0
    if signals.kind is TaskKind.JSON:
        return _json_completeness(text, signals.json_schema)
    if signals.kind is TaskKind.LABEL and signals.labels:
        return _label_completeness(text, signals.labels)
    return 1.0 if text.strip() else 0.0


def completeness(signals: Signals) -> float:
    """How well the answer meets the task's contract; capped when cut off, 0 when it raised."""
    if signals.fault is not FaultClass.NONE:
        return 0.0
    value = _contract(signals)
    if signals.finish_reason == "length":
        return min(value, _TRUNCATED_CAP)
    return value


# --- latency, memory, consistency ----------------------------------------------------------


def latency(elapsed_s: float, deadline_s: float) -> float:
    """1.0 up to half the deadline, then linearly down to 0 at the deadline."""
    if deadline_s <= 0:
        return 1.0 if elapsed_s <= 0 else 0.0
    return _clamp(2.0 * (1.0 - elapsed_s / deadline_s))


def memory(headroom: float) -> float:
    """Fully healthy with a quarter of the budget free; 0 with none."""
    return min(1.0, max(0.0, headroom) / _FULL_MEMORY_HEADROOM)


def _same(kind: TaskKind, a: str, b: str) -> bool:
    if kind is TaskKind.JSON:
        parsed_a = extract_json(a)
        if parsed_a is not None:
            return parsed_a == extract_json(b)
    return normalise(a) == normalise(b)


def agreement(kind: TaskKind, text: str, others: Sequence[str]) -> float:
    """Share of `others` that agree with `text`; 1.0 with none. Empty answers (an engine that
    raised) say nothing and are skipped."""
    said = [o for o in others if o.strip()]
    return sum(_same(kind, text, o) for o in said) / len(said) if said else 1.0


def consistency(signals: Signals) -> float:
    """Agreement of this answer with its votes, peers' and its own earlier answers."""
    return agreement(signals.kind, signals.text, (*signals.samples, *signals.peers, *signals.own_past))


def majority(kind: TaskKind, answers: Sequence[str]) -> int:
    """Index of the answer the most others agree with (the first of the largest group)."""
    support = [sum(_same(kind, a, b) for b in answers) for a in answers]
    return support.index(max(support))


# --- the report ----------------------------------------------------------------------------


def _classify(signals: Signals, parts: dict[str, float], cfg: HealthConfig) -> FaultClass:
    if signals.fault is not FaultClass.NONE:
        return signals.fault
    cut_off = signals.finish_reason == "length"
    if cut_off and parts["completeness"] < cfg.contract_floor:
        return FaultClass.TRUNCATED
    if parts["coherence"] < cfg.coherence_floor:
        return FaultClass.GARBAGE
    if parts["completeness"] < cfg.contract_floor:
        return FaultClass.CONTRACT
    if signals.samples and agreement(signals.kind, signals.text, signals.samples) < cfg.consistency_floor:
        return FaultClass.CONTRACT  # the votes disagree: the model is guessing
    if signals.memory_headroom <= 0:
        return FaultClass.OOM
    return FaultClass.NONE


def _reason(fault: FaultClass, parts: dict[str, float], cfg: HealthConfig) -> str:
    weak = [f"{name}={value:.2f}" for name, value in parts.items() if value < cfg.healthy]
    head = "ok" if fault is FaultClass.NONE else str(fault)
    return f"{head}; weak: {', '.join(weak)}" if weak else head


def score(signals: Signals, cfg: HealthConfig) -> HealthReport:
    """Score one execution and name its most likely fault."""
    raised = signals.fault is not FaultClass.NONE
    parts = {
        "coherence": 0.0 if raised else coherence(signals.text),
        "completeness": completeness(signals),
        "latency": latency(signals.elapsed_s, signals.deadline_s),
        "memory": memory(signals.memory_headroom),
        "consistency": consistency(signals),
    }
    weights = cfg.weights.as_dict()
    total = _clamp(sum(weights[name] * value for name, value in parts.items()))
    fault = _classify(signals, parts, cfg)
    return HealthReport(
        score=total,
        coherence=parts["coherence"],
        completeness=parts["completeness"],
        latency=parts["latency"],
        memory=parts["memory"],
        consistency=parts["consistency"],
        fault=fault,
        healthy=fault is FaultClass.NONE and total >= cfg.healthy,
        reason=_reason(fault, parts, cfg),
    )
