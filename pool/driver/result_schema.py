"""The Arrow schema of results.parquet, derived from `agents.models.TaskResult`.

One row per task, one column per field of the model in its order (the grader's `correct` is a
field too), so a field added to the model is a column without a second list to keep in step.
Column types follow the field's annotation: str and StrEnum -> string, float -> float64, int ->
int64, bool -> bool, tuple[int, ...] -> list<int8> (tier numbers), `X | None` -> X. Every column
is nullable, as the hand-written schema was. `attempts` keeps the int32 it had then, so readers
of earlier and later files see the same types.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from agents.models import TaskResult

# Widths results.parquet has always had where they differ from the defaults below: changing them
# would change the type a reader of the file gets.
KEPT_WIDTHS: Mapping[str, pa.DataType] = {"attempts": pa.int32()}

_SCALARS: tuple[tuple[type, pa.DataType], ...] = (  # bool before int: bool is an int
    (bool, pa.bool_()), (int, pa.int64()), (float, pa.float64()), (str, pa.string()),
)


def arrow_type(annotation: Any) -> pa.DataType:
    """The Arrow type of a column holding values of `annotation`; TypeError if it has none."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        if len(present) == 1:  # `X | None`: a nullable X (every column is nullable)
            return arrow_type(present[0])
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] is int:
        return pa.list_(pa.int8())
    elif origin is None and isinstance(annotation, type):
        for kind, arrow in _SCALARS:
            if issubclass(annotation, kind):  # a StrEnum is a str: its value is stored
                return arrow
    raise TypeError(f"no Arrow column type for {annotation!r}")


def arrow_schema(model: type[BaseModel], widths: Mapping[str, pa.DataType] | None = None) -> pa.Schema:
    """One nullable column per field of `model`, in field order; `widths` overrides by name."""
    widths = widths or {}
    columns = []
    for name, info in model.model_fields.items():
        try:
            columns.append(pa.field(name, widths.get(name) or arrow_type(info.annotation)))
        except TypeError as exc:  # a developer added a field this mapping cannot store
            raise TypeError(f"{model.__name__}.{name}: {exc}") from None
    return pa.schema(columns)


def results_schema(model: type[TaskResult] = TaskResult) -> pa.Schema:
    """The schema of results.parquet for `model` (TaskResult, or a wider model in tests)."""
    return arrow_schema(model, KEPT_WIDTHS)


RESULT_SCHEMA = results_schema()
