"""The Arrow schema of results.parquet is derived from `TaskResult`, and readers see no change."""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa
import pytest

from agents.models import TaskResult, TaskStatus
from pool.driver.result_schema import RESULT_SCHEMA, arrow_schema, results_schema

# The schema results.parquet had when it was typed by hand (before issue 14): the contract with
# every reader of the file (chaos checks, scripts, people's notebooks).
HAND_WRITTEN = pa.schema([
    ("task_id", pa.string()), ("agent_id", pa.string()), ("status", pa.string()),
    ("output", pa.string()), ("score", pa.float64()), ("coherence", pa.float64()),
    ("completeness", pa.float64()), ("latency", pa.float64()), ("memory", pa.float64()),
    ("consistency", pa.float64()), ("attempts", pa.int32()), ("tiers", pa.list_(pa.int8())),
    ("agent_state", pa.string()), ("elapsed_s", pa.float64()), ("tokens", pa.int64()),
    ("vote_tokens", pa.int64()), ("error", pa.string()), ("truth", pa.string()), ("correct", pa.bool_()),
])


def test_every_task_result_field_is_a_column_of_its_old_type() -> None:
    assert RESULT_SCHEMA.names == list(TaskResult.model_fields)
    for name in TaskResult.model_fields:
        assert RESULT_SCHEMA.field(name).type == HAND_WRITTEN.field(name).type, name
    assert RESULT_SCHEMA.equals(HAND_WRITTEN)  # order and nullability too: readers see no change


def test_a_row_of_a_task_result_fits_the_schema() -> None:
    result = TaskResult(task_id="t", agent_id="a", status=TaskStatus.FAILED, tiers=(1, 2), attempts=3)
    row = result.model_dump()
    table = pa.Table.from_pylist([row], schema=RESULT_SCHEMA)
    assert table.to_pylist()[0]["tiers"] == [1, 2]
    assert table.to_pylist()[0]["status"] == "failed"


class Colour(StrEnum):
    RED = "red"


class Wider(TaskResult):
    note: str = ""
    colour: Colour = Colour.RED
    retries: int = 0
    ratio: float | None = None
    flags: tuple[int, ...] = ()


def test_a_field_added_to_the_model_adds_a_column() -> None:
    schema = results_schema(Wider)
    assert schema.names == [*RESULT_SCHEMA.names, "note", "colour", "retries", "ratio", "flags"]
    assert pa.schema(list(schema)[: len(RESULT_SCHEMA)]).equals(RESULT_SCHEMA)  # the old columns unchanged
    assert schema.field("note").type == pa.string()
    assert schema.field("colour").type == pa.string()
    assert schema.field("retries").type == pa.int64()
    assert schema.field("ratio").type == pa.float64()
    assert schema.field("flags").type == pa.list_(pa.int8())


def test_a_field_of_a_type_with_no_column_type_is_refused() -> None:
    class Odd(TaskResult):
        blob: dict[str, int] = {}

    with pytest.raises(TypeError, match="blob"):
        arrow_schema(Odd)
