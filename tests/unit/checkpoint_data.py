"""Agent records, Arrow bytes and store helpers shared by the checkpoint and codec tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

from agents.codec import SCHEMA, encode
from agents.models import AgentRecord, AgentSpec, GenerationParams, Turn
from agents.state import AgentState
from pool.store.checkpoint import MANIFEST, CheckpointStore

AID = "agent-7"


def make(tasks_done: int = 0, agent_id: str = AID, **kw: object) -> AgentRecord:
    return AgentRecord(spec=AgentSpec(agent_id=agent_id), tasks_done=tasks_done, **kw)


RECORDS = {
    "plain": make(),
    "kv_state": make(kv_state=b"\x00\xff" * 5000),
    "empty_kv": make(kv_state=b""),
    "memory_unicode": AgentRecord(
        spec=AgentSpec(
            agent_id="a.b:c_d-1",
            system_prompt="Tu es un agent 🤖 — très bref.",
            priority=9,
            generation=GenerationParams(temperature=0.1, top_p=0.5, max_tokens=7, seed=2**40),
        ),
        state=AgentState.DEGRADED,
        memory=(
            Turn(role="user", content="¿Qué tal? 你好\n\t"),
            Turn(role="assistant", content=""),
        ),
        notes=("ノート", "", "x" * 3000),
        tasks_done=12,
        failed_reason="ünïcode reason",
    ),
}



def with_version(data: bytes, version: bytes) -> bytes:
    metadata = {b"selfheal.schema_version": version}
    batch = next(iter(pa.ipc.open_stream(data))).replace_schema_metadata(metadata)
    return ipc(batch, schema=batch.schema)


def ipc(*batches: pa.RecordBatch, schema: pa.Schema = SCHEMA) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return bytes(sink.getvalue())


def one_batch(record: AgentRecord) -> pa.RecordBatch:
    return next(iter(pa.ipc.open_stream(encode(record))))


VALID = encode(RECORDS["memory_unicode"])


@st.composite
def mutated(draw: st.DrawFn, valid: bytes = VALID) -> bytes:
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


def agent_folder(store: CheckpointStore, agent_id: str = AID) -> Path:
    return Path(store._folder(agent_id))


def manifest_json(store: CheckpointStore, agent_id: str = AID) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((agent_folder(store, agent_id) / MANIFEST).read_text())
    return doc


def plant(store: CheckpointStore, data: bytes, agent_id: str = AID) -> None:
    """Replace the newest version's bytes with `data`, fixing size and sha256 in the manifest."""
    folder = agent_folder(store, agent_id)
    manifest = manifest_json(store, agent_id)
    newest = manifest["entries"][-1]
    (folder / newest["file"]).write_bytes(data)
    newest.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (folder / MANIFEST).write_text(json.dumps(manifest))


def flip_newest(store: CheckpointStore) -> None:
    """Flip one bit of version 2 (the newest of two)."""
    path = agent_folder(store) / "v00000002.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
