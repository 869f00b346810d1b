"""Host deaths counted per task, so that a poison task fails alone and its agent goes on.

Theory of operation. A Host process that dies while running a batch (a schema whose grammar
exhausts memory, an engine call that kills the process) cannot say which task did it; in a batch
of several it told the manager which task it started last (`PoolManager.report_task`), and that
task is charged one death; when no report arrived, every task in flight is. A task charged
`limit` deaths is failed alone ("its Host died N times running it") and its count ends with it;
the others are requeued. The agent itself is not charged: its committed checkpoint is good (it
verified when the Host bound it), and a poison task must not make it FAILED. Pure: counts in,
counts out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def count_deaths(
    counts: Mapping[str, int], in_flight: Sequence[str], limit: int
) -> tuple[dict[str, int], tuple[str, ...]]:
    """The counts after one more Host death under `in_flight`, and the tasks that reached
    `limit` (in `in_flight` order; they are no longer counted)."""
    after = dict(counts)
    doomed = []
    for task_id in in_flight:
        after[task_id] = after.get(task_id, 0) + 1
        if after[task_id] >= limit:
            doomed.append(task_id)
            del after[task_id]
    return after, tuple(doomed)


def forget(counts: Mapping[str, int], finished: Iterable[str]) -> dict[str, int]:
    """The counts without the tasks that ended (a result came back for them)."""
    done = set(finished)
    return {task_id: n for task_id, n in counts.items() if task_id not in done}
