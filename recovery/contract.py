"""The contract a user can state without knowing the answer, checked in bounded time.

Theory of operation. The monitor checks every answer against its task's contract on one thread,
for every Host: a check that can run for minutes stops the pool. Python's `re` backtracks, so a
user's pattern such as `^(a+)+$` takes time exponential in the answer's length; here every
pattern a task brings (JSON schema `pattern`, `patternProperties`, the `regex` format, the task's
own `pattern`) runs on RE2, whose time is linear in the text. The validator is jsonschema's
class for the schema's draft, extended so that its pattern keywords use RE2. A pattern RE2 cannot
compile (backreferences, lookaround, a program over its memory bound) is a problem of the task,
found when tasks are loaded (`schema_problem`, `pattern_problem`, one line each) and, should one
get through, raised as a `UsageError` when the answer is checked. `unevaluatedProperties` beside
`patternProperties` is refused: jsonschema evaluates those patterns with `re` internally.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

import re2
from jsonschema import Draft202012Validator, FormatChecker, SchemaError, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend, validator_for
from referencing.exceptions import Unresolvable

from agents.errors import UsageError

_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})  # values, not schemas
_TRIALS: tuple[Any, ...] = (None, {}, [], "", 0)  # instances a sound schema checks at once
_MAX_PROBLEM = 300


# --- patterns --------------------------------------------------------------------------------


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is our one-line problem, not a log line
    return options


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Any:
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        arg = exc.args[0] if exc.args else ""
        why = arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
        raise UsageError(
            f"pattern {pattern[:80]!r} is not supported: {why} (no backreferences or lookaround)"
        ) from None


def pattern_problem(pattern: str) -> str | None:
    """Why RE2 cannot run `pattern` (one line), or None."""
    try:
        _compiled(pattern)
    except UsageError as exc:
        return str(exc)[:_MAX_PROBLEM]
    return None


def search(pattern: str, text: str) -> bool:
    """`pattern` found in `text`, in time linear in `text` (a UsageError if RE2 refuses it)."""
    regex = _compiled(pattern)
    try:
        return regex.search(text) is not None
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): not a character
        return regex.search(text.encode("utf-8", "replace").decode()) is not None


# --- the JSON-schema keywords that take patterns, on RE2 -------------------------------------


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not search(pattern, instance):
        yield ValidationError(f"does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _extra_keys(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> set[str]:
    properties = schema.get("properties", {})
    patterns = tuple(schema.get("patternProperties", {}))
    return {k for k in instance
            if k not in properties and not any(search(p, k) for p in patterns)}


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = _extra_keys(instance, schema)
    if validator.is_type(additional, "object"):
        for key in sorted(extras):
            yield from validator.descend(instance[key], additional, path=key)
    elif not additional and extras:
        yield ValidationError(f"additional properties are not allowed: {sorted(extras)!r}")


def _is_regex(instance: object) -> bool:
    return not isinstance(instance, str) or pattern_problem(instance) is None


def _format_checker() -> FormatChecker:
    checker = FormatChecker()
    checker.checks("regex")(_is_regex)
    return checker


FORMATS = _format_checker()  # jsonschema's formats, with `regex` meaning "RE2 can run it"
_ON_RE2 = {"pattern": _pattern, "patternProperties": _pattern_properties,
           "additionalProperties": _additional_properties}


@lru_cache(maxsize=16)
def _on_re2(base: type[Validator]) -> type[Validator]:
    cls: type[Validator] = extend(base, _ON_RE2, format_checker=FORMATS)  # type: ignore[no-untyped-call]
    return cls


def validator_class(schema: Mapping[str, Any]) -> type[Validator]:
    """jsonschema's class for the schema's draft (`$schema`, default 2020-12), on RE2."""
    return _on_re2(validator_for(schema, default=Draft202012Validator))


# --- the schema's problems -------------------------------------------------------------------


def _walk(node: Any, found: dict[str, list[Any]]) -> None:
    """Collect, anywhere in a schema, the patterns and the keywords that matter here."""
    if isinstance(node, list):
        for item in node:
            _walk(item, found)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in _DATA_KEYWORDS:
            continue
        if key == "pattern" and isinstance(value, str):
            found["patterns"].append(value)
        elif key == "patternProperties" and isinstance(value, dict):
            found["patterns"].extend(value)
            found["patternProperties"].append(value)
        elif key == "unevaluatedProperties":
            found["unevaluatedProperties"].append(value)
        _walk(value, found)


def _one_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:_MAX_PROBLEM]


def _metaschema_problem(schema: Mapping[str, Any]) -> str | None:
    cls: Any = validator_class(schema)  # the protocol omits check_schema's format_checker
    try:
        cls.check_schema(schema, format_checker=FORMATS)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        return _one_line(f"schema is not a valid JSON schema{f' at {where}' if where else ''}: "
                         f"{exc.message}")
    return None


def _static_problem(schema: Mapping[str, Any]) -> str | None:
    """What the schema's text alone shows: metaschema errors, patterns RE2 refuses, keywords
    whose patterns jsonschema would run on `re`."""
    found: dict[str, list[Any]] = {"patterns": [], "patternProperties": [],
                                   "unevaluatedProperties": []}
    _walk(schema, found)
    for pattern in found["patterns"]:  # first: RE2's reason beats the metaschema's "not a regex"
        if problem := pattern_problem(pattern):
            return f"schema: {problem}"
    if problem := _metaschema_problem(schema):
        return problem
    if found["patternProperties"] and found["unevaluatedProperties"]:
        return "schema: unevaluatedProperties beside patternProperties is not supported"
    return None


def schema_problem(schema: Mapping[str, Any]) -> str | None:
    """Why `schema` cannot be a task's contract (one line), or None: metaschema errors,
    patterns RE2 refuses, `$ref`s that do not resolve or recurse for ever."""
    try:
        if problem := _static_problem(schema):
            return problem
        for instance in _TRIALS:
            conforms(schema, instance)
    except UsageError as exc:
        return _one_line(str(exc))
    except RecursionError:
        return "schema nests too deeply"
    return None


# --- checking an answer ----------------------------------------------------------------------


@lru_cache(maxsize=256)
def _validator(schema_text: str) -> Validator:
    schema = json.loads(schema_text)
    if problem := _static_problem(schema):
        raise UsageError(f"task {problem}")
    validator: Validator = validator_class(schema)(schema)
    return validator


def conforms(schema: Mapping[str, Any], instance: Any) -> bool:
    """`instance` validates against `schema`; a UsageError when the schema is at fault."""
    try:
        return _validator(json.dumps(schema, sort_keys=True)).is_valid(instance)
    except Unresolvable as exc:
        raise UsageError(_one_line(f"task schema: $ref does not resolve: {exc}")) from None
    except RecursionError:
        raise UsageError("task schema: $ref recurses for ever") from None
