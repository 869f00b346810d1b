"""The checkpoint codec (`agents.codec`): one pydantic record <-> one Arrow record batch, schema
versioned; anything else, however broken, is CheckpointCorrupt."""

from __future__ import annotations

import pyarrow as pa
import pytest
from checkpoint_data import RECORDS, ipc, make, mutated, one_batch, with_version
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.codec import SCHEMA, CheckpointUnreadable, decode, encode
from agents.errors import CheckpointCorrupt
from agents.models import AgentRecord

# ---- codec ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_codec_round_trip(name: str) -> None:
    record = RECORDS[name]
    assert decode(encode(record)) == record


def test_codec_schema_is_versioned() -> None:
    schema = pa.ipc.open_stream(encode(make())).schema
    assert schema.metadata[b"selfheal.schema_version"] == b"1"
    assert schema.field("memory").type.value_type == pa.struct(
        [pa.field("role", pa.string(), False), pa.field("content", pa.string(), False)]
    )


def test_decode_rejects_other_schema_version() -> None:
    with pytest.raises(CheckpointCorrupt, match="schema version"):
        decode(with_version(encode(make()), b"2"))


def test_decode_rejects_two_rows_and_two_batches() -> None:
    batch = one_batch(make())
    with pytest.raises(CheckpointCorrupt, match="1 row"):
        decode(ipc(pa.concat_batches([batch, batch])))
    with pytest.raises(CheckpointCorrupt, match="1 batch"):
        decode(ipc(batch, batch))
    with pytest.raises(CheckpointCorrupt, match="1 batch"):
        decode(ipc())


def test_decode_rejects_other_columns() -> None:
    batch = one_batch(make()).drop_columns(["notes"])
    schema = batch.schema.with_metadata(SCHEMA.metadata)
    with pytest.raises(CheckpointCorrupt, match="does not match"):
        decode(ipc(batch.replace_schema_metadata(SCHEMA.metadata), schema=schema))


def test_decode_rejects_null_in_required_column() -> None:
    arrays = one_batch(make()).columns
    arrays[0] = pa.array([None], pa.string())
    batch = pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)
    with pytest.raises(CheckpointCorrupt, match="null"):
        decode(ipc(batch))


@pytest.mark.parametrize(
    ("column", "value", "type_"),
    [
        ("priority", 42, pa.int8()),
        ("agent_id", "no spaces allowed", pa.string()),
        ("state", "zombie", pa.string()),
        ("generation", '{"temperature": 9}', pa.string()),
        ("generation", "{not json", pa.string()),
        ("tasks_done", -1, pa.int64()),
    ],
)
def test_decode_rejects_invalid_values(column: str, value: object, type_: pa.DataType) -> None:
    # well-formed Arrow that the models refuse: unreadable by this version, not corrupt
    arrays = one_batch(make()).columns
    arrays[SCHEMA.get_field_index(column)] = pa.array([value], type_)
    with pytest.raises(CheckpointUnreadable, match="refused by this version's models") as info:
        decode(ipc(pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)))
    assert not isinstance(info.value, CheckpointCorrupt)


@pytest.mark.parametrize("data", [b"", b"not arrow at all", b"\xff" * 64, encode(make())[:-9]])
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(CheckpointCorrupt):
        decode(data)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=4096), mutated()))
def test_decode_fuzz_raises_only_checkpoint_corrupt(data: bytes) -> None:
    try:
        record = decode(data)
    except (CheckpointCorrupt, CheckpointUnreadable):  # a flip can make a value the models refuse
        return
    assert isinstance(record, AgentRecord)  # a flip in padding or text can still be valid


# ---- store: round trips and versions --------------------------------------------------------


