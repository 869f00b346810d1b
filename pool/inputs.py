"""Reading tasks and agent specs from JSONL or Parquet, rejecting bad lines one by one.

A bad line never stops the batch: it becomes a `rejected` result with a one-line error naming the
problem (invalid JSON, invalid UTF-8, a missing or bad field, a duplicate task id, an unknown
agent). A missing or unreadable file is a `UsageError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from agents.config import one_line
from agents.errors import UsageError
from agents.models import AgentSpec, Task, TaskResult, TaskStatus


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, row or None, error) for each line or Parquet row."""
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise UsageError(f"{path}: not a readable Parquet file: {exc}") from None
        for n, row in enumerate(table.to_pylist(), 1):
            yield n, {k: v for k, v in row.items() if v is not None}, ""
        return
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield n, None, f"line {n}: invalid UTF-8"
                continue
            except json.JSONDecodeError as exc:
                yield n, None, f"line {n}: invalid JSON: {exc.msg}"
                continue
            if not isinstance(row, dict):
                yield n, None, f"line {n}: expected a JSON object"
                continue
            yield n, row, ""


def _rejected(n: int, row: dict[str, Any] | None, error: str, seen: set[str],
              claimed: set[str]) -> TaskResult:
    """A rejected row under its own task id if it has a free one, else `line-N` (made unique
    against every task id of the file, so that it never shadows a real task)."""
    raw_id = row.get("task_id") if row else None
    task_id = raw_id if isinstance(raw_id, str) and raw_id and raw_id not in seen else f"line-{n}"
    k = 0
    while task_id != raw_id and (task_id in claimed or task_id in seen):
        k += 1
        task_id = f"line-{n}~{k}"
    agent = row.get("agent_id") if row else None
    return TaskResult(task_id=task_id, agent_id=agent if isinstance(agent, str) else "",
                      status=TaskStatus.REJECTED, error=error)


def load_tasks(path: Path, agents: set[str] | None = None) -> tuple[list[Task], list[TaskResult]]:
    """Valid tasks, and a rejected result for each bad line."""
    tasks: list[Task] = []
    rejected: list[TaskResult] = []
    seen: set[str] = set()
    rows = list(_rows(path))
    claimed = {r["task_id"] for _, r, _ in rows if r and isinstance(r.get("task_id"), str)}
    for n, row, error in rows:
        if row is not None:
            error = _check(n, row, seen, agents)
        if error:
            rec = _rejected(n, row, error, seen, claimed)
            seen.add(rec.task_id)
            rejected.append(rec)
            continue
        assert row is not None
        task = Task.model_validate(row)
        seen.add(task.task_id)
        tasks.append(task)
    return tasks, rejected


def _check(n: int, row: dict[str, Any], seen: set[str], agents: set[str] | None) -> str:
    try:
        task = Task.model_validate(row)
    except ValidationError as exc:
        return one_line(exc, f"line {n}")
    if task.task_id in seen:
        return f"line {n}: duplicate task_id {task.task_id}"
    if agents is not None and task.agent_id not in agents:
        return f"line {n}: unknown agent_id {task.agent_id}"
    return ""


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
