"""Seeded synthetic workloads for the scripted engine (tests, benchmarks, chaos runs)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from agents.models import Task, TaskKind

_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "amount": {"type": "number"}},
           "required": ["name", "amount"]}
_LABELS = ("even", "odd")


def synthetic_tasks(n: int, agents: int, seed: int = 0, prefix: str = "t") -> list[Task]:
    """`n` tasks over agents agent-000000..agent-{agents-1}, all four kinds, verifiable answers.
    Every key follows from its prompt (a sum, its parity), so the scripted engine answers right
    by working the prompt out, without ever being handed the key."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        agent = f"agent-{rng.randrange(agents):06d}"
        kind = (TaskKind.ANSWER, TaskKind.LABEL, TaskKind.JSON, TaskKind.FREE)[i % 4]
        a, b = rng.randrange(100), rng.randrange(100)
        fields: dict[str, object] = {"task_id": f"{prefix}{i:06d}", "agent_id": agent,
                                     "prompt": f"Task {i}: what is {a} plus {b}?", "kind": kind}
        if kind is TaskKind.ANSWER:
            fields["expected"] = str(a + b)
        elif kind is TaskKind.LABEL:  # a key the prompt determines: a model can work it out
            fields["prompt"] = f"Task {i}: is {a} plus {b} even or odd?"
            fields["labels"] = _LABELS
            fields["expected"] = _LABELS[(a + b) % 2]
        elif kind is TaskKind.JSON:
            fields["schema"] = _SCHEMA
        out.append(Task.model_validate(fields))
    return out


def write_tasks(path: Path, tasks: list[Task]) -> Path:
    with open(path, "w") as fh:
        for t in tasks:
            fh.write(json.dumps(t.model_dump(mode="json", by_alias=True, exclude_none=True)) + "\n")
    return path
