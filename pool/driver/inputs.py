"""Reading tasks and agent specs from JSONL or Parquet, rejecting bad lines one by one.

A bad line never stops the batch: it becomes a `rejected` result with a one-line error naming the
problem (a line over `MAX_TASK_BYTES`, invalid UTF-8 or JSON, nesting deeper than `MAX_NESTING`,
a lone surrogate, a missing or bad field, an invalid schema, a duplicate task id, an unknown
agent). A missing or unreadable file is a `UsageError`.

The file is read once, in bounded memory: a JSONL line is read at most `MAX_TASK_BYTES + 1` bytes
at a time (the rest of a longer line is skipped unread), and Parquet comes in record batches with
its text columns kept dictionary-encoded, so a small file of one huge repeated value never
expands in memory; a row's size is measured in Arrow before any of it becomes Python. The
unknown-agent check is a pure pass over what was read (`TaskFile.for_agents`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ValidationError

from agents.config import one_line
from agents.errors import UsageError
from agents.models import MAX_TASK_BYTES, AgentSpec, Task, TaskResult, TaskStatus
from recovery.contract import schema_problem

MAX_NESTING = 64  # JSON levels: far above a real schema, far below what the checkers recurse into
_MAX_ID_CHARS = 128  # Task.task_id's limit: a longer raw id never names a rejected row
_MAX_ERROR_CHARS = 300
_PARQUET_BATCH_ROWS = 64  # each row at most MAX_TASK_BYTES of text: a batch stays small
_SKIP_BYTES = 1 << 16
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

Row = tuple[int, dict[str, Any] | None, str]  # line number, the row (None: unreadable), error


@dataclass(frozen=True, slots=True)
class TaskFile:
    """One read of a task file: the valid tasks and one rejected row per bad line."""

    tasks: list[Task]
    rejected: list[TaskResult]  # in line order
    line_of: dict[str, int]  # the line (Parquet: row) of every task id, valid or rejected

    def for_agents(self, agents: Collection[str]) -> TaskFile:
        """The same file with each task of an agent not in `agents` rejected in its place."""
        known = frozenset(agents)
        unknown = [_rejection(t.task_id, t.agent_id,
                              f"line {self.line_of[t.task_id]}: unknown agent_id {t.agent_id}")
                   for t in self.tasks if t.agent_id not in known]
        if not unknown:
            return self
        rejected = sorted([*self.rejected, *unknown], key=lambda r: self.line_of[r.task_id])
        return TaskFile([t for t in self.tasks if t.agent_id in known], rejected, self.line_of)


def load_tasks(path: Path, agents: Collection[str] | None = None
               ) -> tuple[list[Task], list[TaskResult]]:
    """Valid tasks, and a rejected result for each bad line (with `agents`, each task of an
    agent not in it too)."""
    loaded = read_tasks(path)
    if agents is not None:
        loaded = loaded.for_agents(agents)
    return loaded.tasks, loaded.rejected


def read_tasks(path: Path) -> TaskFile:
    """One read of a task file."""
    tasks: list[Task] = []
    rejected: list[TaskResult] = []
    line_of: dict[str, int] = {}
    unnamed: list[tuple[int, int]] = []  # (index in `rejected`, line) of rows without a usable id
    for n, row, error in _rows(path):
        task, error = _task(n, row, error, line_of)
        if task is not None:
            tasks.append(task)
            line_of[task.task_id] = n
            continue
        own = _own_id(row, line_of)
        if own is None:
            unnamed.append((len(rejected), n))
        else:
            line_of[own] = n
        rejected.append(_rejection(own or "", _text(row, "agent_id") or "", error))
    for i, n in unnamed:  # now that every id of the file is known, none can be shadowed
        task_id = _fallback_id(n, line_of)
        line_of[task_id] = n
        rejected[i] = rejected[i].model_copy(update={"task_id": task_id})
    return TaskFile(tasks, rejected, line_of)


def _task(n: int, row: dict[str, Any] | None, error: str,
          seen: Collection[str]) -> tuple[Task | None, str]:
    if error or row is None:
        return None, error
    try:
        task = Task.model_validate(row)
    except ValidationError as exc:
        return None, one_line(exc, f"line {n}")
    if task.task_id in seen:
        return None, f"line {n}: duplicate task_id {task.task_id}"
    if task.json_schema is not None and (problem := _schema_error(task.json_schema)):
        return None, f"line {n}: {problem}"
    return task, ""


def _schema_error(schema: dict[str, Any]) -> str | None:
    try:  # a Parquet struct may hold bytes, NaN or non-string map keys
        text = json.dumps(schema, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"schema is not JSON: {exc}"
    return _schema_problem(text)


@lru_cache(maxsize=1024)
def _schema_problem(schema_text: str) -> str | None:
    """Checked once per distinct schema: a batch repeats a few schemas over many tasks, and the
    metaschema check costs about a millisecond."""
    return schema_problem(json.loads(schema_text))


def _rejection(task_id: str, agent_id: str, error: str) -> TaskResult:
    error = "".join(c if c.isprintable() else repr(c)[1:-1] for c in error[:_MAX_ERROR_CHARS])
    return TaskResult(task_id=task_id, agent_id=agent_id, status=TaskStatus.REJECTED, error=error)


def _text(row: dict[str, Any] | None, key: str) -> str | None:
    """`row[key]` when it is a string the ledger can write as an id, else None."""
    value = row.get(key) if row else None
    ok = isinstance(value, str) and 0 < len(value) <= _MAX_ID_CHARS and _is_utf8(value)
    return value if ok else None


def _own_id(row: dict[str, Any] | None, taken: Collection[str]) -> str | None:
    task_id = _text(row, "task_id")
    return task_id if task_id is not None and task_id not in taken else None


def _fallback_id(n: int, taken: Collection[str]) -> str:
    task_id, k = f"line-{n}", 0
    while task_id in taken:
        k += 1
        task_id = f"line-{n}~{k}"
    return task_id


# --- rows: JSONL lines and Parquet rows ------------------------------------------------------


def _rows(path: Path) -> Iterator[Row]:
    """(line number, row or None, error) for each line or Parquet row."""
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    yield from _parquet_rows(path) if path.suffix == ".parquet" else _jsonl_rows(path)


def _jsonl_rows(path: Path) -> Iterator[Row]:
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, around the generator's yields
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    with fh:
        n = 0
        while raw := fh.readline(MAX_TASK_BYTES + 1):
            n += 1
            if len(raw) > MAX_TASK_BYTES and not raw.endswith(b"\n"):
                _skip_line(fh)
                yield n, None, f"line {n}: over {MAX_TASK_BYTES} bytes"
            elif raw.strip():
                yield (n, *_decode(n, raw))


def _skip_line(fh: IO[bytes]) -> None:
    while (chunk := fh.readline(_SKIP_BYTES)) and not chunk.endswith(b"\n"):
        pass


def _decode(n: int, raw: bytes) -> tuple[dict[str, Any] | None, str]:
    try:
        row = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except UnicodeDecodeError:
        return None, f"line {n}: invalid UTF-8"
    except RecursionError:
        return None, f"line {n}: nested deeper than {MAX_NESTING} levels"
    except ValueError as exc:  # bad syntax, NaN, 1e999, an integer over Python's digit limit
        return None, f"line {n}: invalid JSON: {getattr(exc, 'msg', str(exc).split(':')[0])}"
    if not isinstance(row, dict):
        return None, f"line {n}: expected a JSON object"
    return row, _shape_problem(n, row) if _may_be_odd(raw) else ""


def _may_be_odd(raw: bytes) -> bool:
    """Whether the line could nest deeper than MAX_NESTING or hold a surrogate (which only a
    \\uD800-\\uDFFF escape can produce): a test at C speed that spares most lines the walk."""
    return (raw.count(b"[") + raw.count(b"{") > MAX_NESTING
            or _SURROGATE_ESCAPE.search(raw) is not None)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def _shape_problem(n: int, row: dict[str, Any]) -> str:
    """What no later step could take: nesting the schema checkers would recurse through, or a
    lone surrogate (JSON's "\\ud800"), which neither the ledger nor an engine can encode."""
    stack: list[tuple[Any, int]] = [(row, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str) and not _is_utf8(value):
            return f"line {n}: a lone surrogate in a string"
        if isinstance(value, dict | list | tuple):
            if depth > MAX_NESTING:
                return f"line {n}: nested deeper than {MAX_NESTING} levels"
            items = [*value, *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return ""


def _is_utf8(text: str) -> bool:
    try:
        return text.isascii() or bool(text.encode("utf-8"))
    except UnicodeEncodeError:
        return False


def _parquet_rows(path: Path) -> Iterator[Row]:
    n = 0
    for batch in _batches(path):
        fits = pc.less_equal(_row_bytes(batch), MAX_TASK_BYTES).to_pylist()
        kept = iter(batch.filter(pa.array(fits)).to_pylist())  # only rows under the cap
        for ok in fits:
            n += 1
            if not ok:
                yield n, None, f"line {n}: over {MAX_TASK_BYTES} bytes"
                continue
            row = {k: v for k, v in next(kept).items() if v is not None}
            yield n, row, _shape_problem(n, row)


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    def unreadable(exc: Exception) -> UsageError:
        return UsageError(f"{path}: not a readable Parquet file: {exc}")

    try:
        text = [f.name for f in pq.read_schema(path) if _is_text(f.type)]
        batches = pq.ParquetFile(path, read_dictionary=text).iter_batches(_PARQUET_BATCH_ROWS)
    except (pa.ArrowException, OSError) as exc:
        raise unreadable(exc) from None
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise unreadable(exc) from None
        yield batch


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_large_binary(t))


def _row_bytes(batch: pa.RecordBatch) -> pa.Array:
    """The bytes each row holds, nested strings and lists included, measured in Arrow."""
    total = pa.array([0] * batch.num_rows, pa.int64())
    for column in batch.columns:
        total = pc.add(total, _value_bytes(column))
    return total


def _value_bytes(arr: pa.Array) -> pa.Array:
    """Bytes of each value of `arr` (int64, 0 for a null)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        sizes = pc.take(_value_bytes(arr.dictionary), arr.indices)
    elif _is_text(t):
        sizes = pc.binary_length(arr)
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        inner = pc.cumulative_sum(_value_bytes(arr.values))
        ends = pc.take(pa.concat_arrays([pa.array([0], pa.int64()), inner]), arr.offsets)
        sizes = pc.subtract(ends[1:], ends[:-1])
    elif pa.types.is_struct(t):
        sizes = pa.array([0] * len(arr), pa.int64())
        for i in range(t.num_fields):
            sizes = pc.add(sizes, _value_bytes(arr.field(i)))
    else:  # a fixed-width value (or one the Task model refuses anyway)
        sizes = pa.array([max(1, t.bit_width // 8) if _fixed(t) else 0] * len(arr), pa.int64())
    return pc.fill_null(pc.cast(sizes, pa.int64()), 0)


def _fixed(t: pa.DataType) -> bool:
    try:
        return bool(t.bit_width > 0)
    except ValueError:
        return False


# --- agents ----------------------------------------------------------------------------------


def load_agents(path: Path) -> list[AgentSpec]:
    """Agent specs; unlike tasks, a bad spec is a usage error (the whole set is configuration)."""
    specs: dict[str, AgentSpec] = {}
    for n, row, error in _rows(path):
        if error:
            raise UsageError(f"{path}: {error}")
        try:
            spec = AgentSpec.model_validate(row)
        except ValidationError as exc:
            raise UsageError(one_line(exc, f"{path}: line {n}")) from None
        if spec.agent_id in specs:
            raise UsageError(f"{path}: line {n}: duplicate agent_id {spec.agent_id}")
        specs[spec.agent_id] = spec
    return list(specs.values())


def generated_agents(n: int) -> list[AgentSpec]:
    """`n` agents with default personas, ids agent-000000 ... (deterministic priorities)."""
    return [AgentSpec(agent_id=f"agent-{i:06d}", priority=i % 10) for i in range(n)]
