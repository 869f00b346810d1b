"""The HealthMonitor's state and logic, without Ray: score, decide, remember.

For each outcome it fills in the peers' and the agent's own earlier answers to the same prompt
(consistency), scores it, and asks the policy for a decision with the agent's supervision
history, which it keeps. A task's attempt and tiers come with it (the Host's carry): the monitor
keeps no per-task state, so a restarted monitor still holds a task to the attempt cap. FAILED
agents and dead-lettered tasks are kept with their reasons until a person releases them; each
such fact (and each release) also goes to `journal`, which the Ray actor in `pool/runtime/actors.py`
points at the store's dead-letter table (`pool.store.deadletters`), and a new monitor `replay`s that
table, so a restart loses none of them. The actor only wraps this class.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from agents.config import HealthConfig, RecoveryConfig
from agents.events import EventSink
from recovery.health import normalise, score
from recovery.policy import decide
from recovery.types import Action, Decision, HealthReport, History, Signals

_PEERS_PER_PROMPT = 8
_PROMPTS_KEPT = 20_000
_REPORTS_PER_AGENT = 5


def _key(prompt: str) -> str:
    return hashlib.blake2b(prompt.encode(), digest_size=8).hexdigest()


class Monitor:
    def __init__(
        self,
        health: HealthConfig,
        recovery: RecoveryConfig,
        clock: Callable[[], float] = time.time,
        journal: Callable[[list[dict[str, Any]]], object] | None = None,
    ) -> None:
        self.health = health
        self.recovery = recovery
        self.clock = clock
        self.journal = journal  # keeps dead letters, failures and releases (durably, at the edge)
        self.events = EventSink("health-monitor")
        self.histories: dict[str, History] = {}
        self.answers: OrderedDict[str, deque[tuple[str, str]]] = OrderedDict()
        self.reports: dict[str, deque[dict[str, Any]]] = {}
        self.failed: dict[str, str] = {}
        self.dead_letters: list[dict[str, Any]] = []

    def assess(
        self, agent_id: str, items: list[tuple[str, str, int, Signals]]
    ) -> list[tuple[HealthReport, Decision]]:
        now = self.clock()  # one round, one instant: its tier-2 decisions are one restart
        return [self._assess_one(agent_id, now, *item) for item in items]

    def _assess_one(
        self, agent_id: str, now: float, task_id: str, prompt: str, attempt: int, signals: Signals
    ) -> tuple[HealthReport, Decision]:
        key = _key(prompt)
        seen = self.answers.get(key, ())
        peers = tuple(a for who, a in seen if who != agent_id)
        own = tuple(a for who, a in seen if who == agent_id)
        report = score(replace(signals, peers=peers, own_past=own), self.health)
        # restarts and floor belong to the agent; attempts and tiers to the task, which carries
        # them (tasks of one agent are assessed interleaved in a batch)
        agent = self.histories.get(agent_id, History())
        history = replace(agent, attempts=attempt, tiers_used=signals.tiers_used)
        decision = decide(report, history, self.recovery, now)
        self.histories[agent_id] = decision.history.for_new_task()
        self._remember(agent_id, key, signals.text, decision)
        self._record(agent_id, task_id, report, decision)
        return report, decision

    def _remember(self, agent_id: str, key: str, text: str, decision: Decision) -> None:
        if decision.action is not Action.ACCEPT or not text:
            return
        seen = self.answers.setdefault(key, deque(maxlen=_PEERS_PER_PROMPT))
        seen.append((agent_id, normalise(text)))
        self.answers.move_to_end(key)
        while len(self.answers) > _PROMPTS_KEPT:
            self.answers.popitem(last=False)

    def _record(self, agent_id: str, task_id: str, report: HealthReport, decision: Decision) -> None:
        entry = {"task_id": task_id, "score": round(report.score, 4), "fault": report.fault.value,
                 "action": decision.action.value, "tier": int(decision.tier), "ts": self.clock()}
        self.reports.setdefault(agent_id, deque(maxlen=_REPORTS_PER_AGENT)).append(entry)
        if decision.action in (Action.FAIL_TASK, Action.FAIL_AGENT):
            letter = {"agent_id": agent_id, "reason": decision.reason, **entry}
            self.dead_letters.append(letter)
            self._keep({"kind": "dead_letter", **letter})
            self.events.emit("recovery.dead_lettered", agent_id=agent_id, task_id=task_id,
                             reason=decision.reason)
        if decision.action is Action.FAIL_AGENT:
            self.mark_failed(agent_id, decision.reason)

    def release(self, agent_id: str) -> bool:
        """A person released the agent: forget its failure, its dead letters and its supervision
        history."""
        self.histories.pop(agent_id, None)
        self.dead_letters = [d for d in self.dead_letters if d["agent_id"] != agent_id]
        self._keep({"kind": "released", "agent_id": agent_id, "ts": self.clock()})
        return self.failed.pop(agent_id, None) is not None

    def mark_failed(self, agent_id: str, reason: str) -> None:
        """Record the agent FAILED, once: the manager tells the monitor of every failure it folds
        (some were decided by a Host alone), including those the monitor itself decided."""
        if agent_id in self.failed:
            return
        self.failed[agent_id] = reason
        self._keep({"kind": "agent_failed", "agent_id": agent_id, "reason": reason,
                    "ts": self.clock()})
        self.events.emit("agent.failed", agent_id=agent_id, reason=reason)

    def replay(self, rows: list[dict[str, Any]]) -> None:
        """Take back the failures and dead letters a journal kept (a restart, a new run)."""
        self.failed, self.dead_letters = fold_letters(rows)

    def _keep(self, row: dict[str, Any]) -> None:
        if self.journal is not None:
            self.journal([row])

    def inspect(self, agent_id: str) -> dict[str, Any]:
        history = self.histories.get(agent_id, History())
        return {"failed": self.failed.get(agent_id), "restarts": len(history.restarts),
                "floor": int(history.floor), "reports": list(self.reports.get(agent_id, ()))}


def fold_letters(rows: list[dict[str, Any]]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """FAILED agents (id -> reason) and dead letters from a journal's rows, in order: a release
    drops the agent's earlier rows. Rows of an unknown kind (a newer version's) are skipped."""
    failed: dict[str, str] = {}
    letters: list[dict[str, Any]] = []
    for row in rows:
        kind, agent_id = row.get("kind"), row.get("agent_id")
        if not isinstance(agent_id, str):
            continue
        if kind == "dead_letter":
            letters.append({k: v for k, v in row.items() if k != "kind"})
        elif kind == "agent_failed":
            failed[agent_id] = str(row.get("reason", ""))
        elif kind == "released":
            failed.pop(agent_id, None)
            letters = [d for d in letters if d["agent_id"] != agent_id]
    return failed, letters
