"""The shipped workload, and representative subsets of it for shorter real-model runs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from agents.models import AgentSpec, Task
from pool.driver.inputs import load_agents, load_tasks

TASKS = Path("examples/tasks.jsonl")
AGENTS = Path("examples/agents.jsonl")


def stratified(tasks: list[Task], n: int) -> list[Task]:
    """`n` tasks (at least one per kind) with the kinds in the workload's proportions, evenly
    spaced within each kind (deterministic), in the workload's order."""
    if n >= len(tasks):
        return list(tasks)
    by_kind: dict[str, list[Task]] = defaultdict(list)
    for t in tasks:
        by_kind[t.kind.value].append(t)
    quota = {kind: n * len(group) / len(tasks) for kind, group in by_kind.items()}
    counts = {kind: int(q) for kind, q in quota.items()}
    by_remainder = sorted(quota, key=lambda kind: quota[kind] - counts[kind], reverse=True)
    for kind in by_remainder[: n - sum(counts.values())]:  # largest remainders: exactly n
        counts[kind] += 1
    picked: set[str] = set()
    for kind, group in by_kind.items():
        k = max(1, counts[kind])
        step = len(group) / k
        picked.update(group[int(i * step)].task_id for i in range(k))
    return [t for t in tasks if t.task_id in picked]


def shipped(limit: int | None, tasks_path: Path = TASKS,
            agents_path: Path = AGENTS) -> tuple[list[Task], list[AgentSpec]]:
    """The shipped tasks (a stratified subset when `limit` is given) and their agents."""
    tasks, _ = load_tasks(tasks_path)
    agents = load_agents(agents_path) if agents_path.exists() else [
        AgentSpec(agent_id=a) for a in dict.fromkeys(t.agent_id for t in tasks)]
    return (stratified(tasks, limit) if limit else tasks), agents
