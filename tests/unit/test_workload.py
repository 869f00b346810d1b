"""The shipped workload (examples/tasks.jsonl, examples/agents.jsonl) is valid and varied."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest

from agents.models import AgentSpec, Task, TaskKind

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _lines(name: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (EXAMPLES / name).read_text().splitlines() if line]


@pytest.fixture(scope="module")
def tasks() -> list[Task]:
    return [Task.model_validate(line) for line in _lines("tasks.jsonl")]


def test_tasks_are_many_unique_and_varied(tasks: list[Task]) -> None:
    assert len(tasks) >= 300
    assert len({t.task_id for t in tasks}) == len(tasks)
    assert len({t.agent_id for t in tasks}) >= 30
    assert {t.kind for t in tasks} == set(TaskKind)


def test_contracts_are_self_consistent(tasks: list[Task]) -> None:
    for t in tasks:
        if t.kind is TaskKind.JSON:
            assert t.json_schema is not None and t.expected is not None
            jsonschema.Draft202012Validator.check_schema(t.json_schema)
            jsonschema.validate(json.loads(t.expected), t.json_schema)
        if t.kind is TaskKind.LABEL:
            assert t.labels and t.expected in t.labels


def test_every_task_agent_has_a_spec(tasks: list[Task]) -> None:
    specs = [AgentSpec.model_validate(line) for line in _lines("agents.jsonl")]
    ids = {s.agent_id for s in specs}
    assert len(ids) == len(specs) >= 30
    assert {t.agent_id for t in tasks} <= ids


def test_shipped_files_are_what_the_seeded_generator_writes(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "make_tasks", EXAMPLES.parent / "scripts/make_tasks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path)]) == 0
    for name in ("tasks.jsonl", "agents.jsonl"):
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes()
