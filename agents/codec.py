"""An `AgentRecord` as one Arrow record batch, and back.

Theory of operation: a checkpoint is an Arrow IPC *stream* holding exactly one record batch of
exactly one row, under a fixed schema that carries its version in the schema metadata
(`selfheal.schema_version`). Decoding trusts nothing: the schema must match this module's exactly
(names, types, nullability, metadata), the batch is validated in full by Arrow (offsets, UTF-8),
and the row is validated again by the pydantic models. Bytes that are not such a stream surface as
`CheckpointCorrupt`, so the store can quarantine the file and fall back. A well-formed record that
cannot be made into an `AgentRecord` now (out of memory, or a value this version's models refuse:
a limit tightened by an upgrade) is `CheckpointUnreadable`: the file is not to blame and is kept.

A committed version also carries a `Stamp` (agent id, version, epoch) in its batch's custom
metadata, put there by the store at commit: a lost or corrupt manifest is rebuilt from the files.

The generation parameters travel as JSON so that a new sampling field with a default does not need
a new schema version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
from pydantic import ValidationError

from agents.errors import CheckpointCorrupt, StorageError
from agents.models import AgentRecord, AgentSpec, GenerationParams, Turn

SCHEMA_VERSION: Final = "1"
_VERSION_KEY: Final = b"selfheal.schema_version"
_STAMP_KEYS: Final = (b"selfheal.agent_id", b"selfheal.version", b"selfheal.epoch")


class CheckpointUnreadable(StorageError):
    """A well-formed checkpoint that cannot be decoded now (out of memory, or refused by this
    version's models): retryable, and never a reason to quarantine the file."""


@dataclass(frozen=True, slots=True)
class Stamp:
    """Which committed version a checkpoint file is."""

    agent_id: str
    version: int
    epoch: int

_TURN = pa.struct(
    [
        pa.field("role", pa.string(), nullable=False),
        pa.field("content", pa.string(), nullable=False),
    ]
)
SCHEMA: Final = pa.schema(
    [
        pa.field("agent_id", pa.string(), nullable=False),
        pa.field("system_prompt", pa.string(), nullable=False),
        pa.field("priority", pa.int8(), nullable=False),
        pa.field("generation", pa.string(), nullable=False),  # GenerationParams as JSON
        pa.field("state", pa.string(), nullable=False),
        pa.field("memory", pa.list_(pa.field("item", _TURN, nullable=False)), nullable=False),
        pa.field("notes", pa.list_(pa.field("item", pa.string(), nullable=False)), nullable=False),
        pa.field("kv_state", pa.binary(), nullable=True),
        pa.field("tasks_done", pa.int64(), nullable=False),
        pa.field("failed_reason", pa.string(), nullable=True),
    ],
    metadata={_VERSION_KEY: SCHEMA_VERSION.encode()},
)


def encode(record: AgentRecord, stamp: Stamp | None = None) -> bytes:
    """The record as an Arrow IPC stream of one single-row batch under `SCHEMA`, stamped as a
    committed version when `stamp` is given."""
    try:
        batch = pa.RecordBatch.from_arrays(_columns(record), schema=SCHEMA)
    except (pa.ArrowException, OverflowError) as exc:  # e.g. tasks_done past int64
        raise StorageError(f"cannot encode agent {record.spec.agent_id}: {exc}") from exc
    return _stream(batch, stamp)


def stamped(data: bytes, stamp: Stamp) -> bytes:
    """`data` (a valid checkpoint) with `stamp` in its batch's metadata; the row is unchanged."""
    try:
        batch = next(iter(pa.ipc.open_stream(pa.py_buffer(data))))
    except MemoryError as exc:
        raise CheckpointUnreadable(f"out of memory stamping a checkpoint: {exc}") from None
    except (pa.ArrowException, OSError, StopIteration) as exc:
        raise CheckpointCorrupt(f"cannot stamp: not a valid Arrow checkpoint: {exc}") from None
    return _stream(batch, stamp)


def read_stamp(data: bytes) -> Stamp | None:
    """The stamp of a committed version's bytes; None for a file written before stamps (or a
    hot-tier copy). Raises `CheckpointCorrupt` for bytes that are not a checkpoint stream."""
    try:
        got = pa.ipc.open_stream(pa.py_buffer(data)).read_next_batch_with_custom_metadata()
        meta = got.custom_metadata
        if meta is None or not all(k in meta for k in _STAMP_KEYS):
            return None
        agent_id, version, epoch = (meta[k].decode() for k in _STAMP_KEYS)
        return Stamp(agent_id, int(version), int(epoch))
    except MemoryError as exc:
        raise CheckpointUnreadable(f"out of memory reading a checkpoint: {exc}") from None
    except (pa.ArrowException, OSError, ValueError, StopIteration) as exc:
        raise CheckpointCorrupt(f"unreadable stamp: {type(exc).__name__}: {exc}") from None


def _stream(batch: pa.RecordBatch, stamp: Stamp | None) -> bytes:
    metadata = None
    if stamp is not None:
        values = (stamp.agent_id, str(stamp.version), str(stamp.epoch))
        metadata = {k: v.encode() for k, v in zip(_STAMP_KEYS, values, strict=True)}
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SCHEMA) as writer:
        writer.write_batch(batch, custom_metadata=metadata)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def _columns(record: AgentRecord) -> list[pa.Array]:
    spec = record.spec
    turns = [{"role": t.role, "content": t.content} for t in record.memory]
    values: list[Any] = [
        spec.agent_id,
        spec.system_prompt,
        spec.priority,
        spec.generation.model_dump_json(),
        record.state.value,
        turns,
        list(record.notes),
        record.kv_state,
        record.tasks_done,
        record.failed_reason,
    ]
    return [pa.array([v], type=f.type) for v, f in zip(values, SCHEMA, strict=True)]


def decode(data: bytes) -> AgentRecord:
    """The record in `data`; `CheckpointCorrupt` for bytes that are not a checkpoint,
    `CheckpointUnreadable` for one that cannot be made into a record now."""
    try:
        return _row_to_record(_single_row(data))
    except CheckpointCorrupt:
        raise
    except ValidationError as exc:
        raise CheckpointUnreadable(
            f"agent record refused by this version's models: {_first_error(exc)}"
        ) from None
    except MemoryError as exc:  # pyarrow's ArrowMemoryError included
        raise CheckpointUnreadable(f"out of memory decoding a checkpoint: {exc}") from None
    # In-memory bytes: an OSError here is Arrow's "Invalid IPC message", not an I/O failure.
    except (pa.ArrowException, OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise CheckpointCorrupt(
            f"not a valid Arrow checkpoint: {type(exc).__name__}: {exc}"
        ) from None


def _single_row(data: bytes) -> dict[str, Any]:
    reader = pa.ipc.open_stream(pa.py_buffer(data))
    _check_schema(reader.schema)
    batches = list(reader)
    if len(batches) != 1 or batches[0].num_rows != 1:
        rows = sum(b.num_rows for b in batches)
        raise CheckpointCorrupt(f"expected 1 batch of 1 row, got {len(batches)} with {rows} rows")
    batch = batches[0]
    batch.validate(full=True)
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if not field.nullable and column.null_count:
            raise CheckpointCorrupt(f"null in non-nullable column {field.name}")
    return {
        name: col[0].as_py() for name, col in zip(batch.schema.names, batch.columns, strict=True)
    }


def _check_schema(schema: pa.Schema) -> None:
    version = (schema.metadata or {}).get(_VERSION_KEY)
    if version != SCHEMA_VERSION.encode():
        raise CheckpointCorrupt(f"unsupported checkpoint schema version {version!r}")
    if not schema.equals(SCHEMA, check_metadata=True):
        raise CheckpointCorrupt("checkpoint schema does not match version " + SCHEMA_VERSION)


def _row_to_record(row: dict[str, Any]) -> AgentRecord:
    spec = AgentSpec(
        agent_id=row["agent_id"],
        system_prompt=row["system_prompt"],
        priority=row["priority"],
        generation=GenerationParams.model_validate_json(row["generation"]),
    )
    return AgentRecord(
        spec=spec,
        state=row["state"],
        memory=tuple(Turn.model_validate(t) for t in row["memory"]),
        notes=tuple(row["notes"]),
        kv_state=row["kv_state"],
        tasks_done=row["tasks_done"],
        failed_reason=row["failed_reason"],
    )


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "record"
    return f"{where}: {err['msg']}"
