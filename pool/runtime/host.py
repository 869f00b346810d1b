"""What a Host does for its one resident agent: EXECUTE -> MONITOR -> RECOVER.

A Host holds at most one agent (an `AgentRecord` plus its epoch). `run` executes a batch of the
agent's tasks in rounds: every pending task is executed once, all outcomes go to the monitor in
one call (`assess`), and each decision is applied: accept, retry re-tuned, compress memory, hand
the task back for migration, or give up. Every round is bounded by the policy's attempt cap.
Results leave the Host only after the agent's new state is a committed checkpoint.

A monitor that does not answer in time (`MonitorUnavailable`) is not waited for again in the
batch: the Host scores and decides alone with the same pure functions, without peers, each
task's attempts taken from its carry.

Whatever one task raises besides `EngineFault` (a schema that cannot be checked, a grammar the
engine refuses, MemoryError, a backoff that cannot be slept) fails that task alone, with a
one-line reason and a `host.task_error` event; the agent and its other tasks go on.

Binding, parking and the engine's device are the `pool.runtime.residency.Residency` half. No Ray here:
the Ray actor in `pool/runtime/actors.py` wraps this class, so tests drive it directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from agents.config import Settings
from agents.engines.base import Engine, GenRequest, GenResult
from agents.errors import EngineFault, FaultClass, GroundTruth, SelfhealError, UsageError
from agents.events import EventSink
from agents.models import AgentRecord, GenerationParams, Task, TaskResult, TaskStatus, Turn
from agents.state import AgentState, Event
from pool.runtime.residency import Residency
from pool.runtime.voting import vote, votes_for
from pool.store.checkpoint import CheckpointStore
from recovery.contract import schema_problem
from recovery.health import score
from recovery.policy import apply_retune, decide
from recovery.types import Action, Decision, HealthReport, History, Signals

Verdict = tuple[HealthReport, Decision]
# (agent_id, [(task_id, prompt, attempt, signals)]) -> [(report, decision)]; raises
# MonitorUnavailable when the monitor does not answer in time
Assess = Callable[[str, list[tuple[str, str, int, Signals]]], list[Verdict]]


def one_line(exc: BaseException) -> str:
    """`Type: first line of its message` (300 characters at most): a failed task's error."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}"[:300] if lines else type(exc).__name__


class MonitorUnavailable(SelfhealError):
    """The monitor did not answer in time (or is gone): the Host assesses its tasks itself."""


@dataclass(frozen=True, slots=True)
class Carry:
    """A task's recovery state between attempts; travels with a migrated task."""

    params: GenerationParams
    attempt: int = 0
    constrain: bool = False
    tiers: tuple[int, ...] = ()
    memory_compressed: bool = False
    host_changed: bool = False
    tokens: int = 0
    vote_tokens: int = 0  # of `tokens`, what the extra self-consistency samples cost
    truth: str = ""
    started: float = 0.0  # clock() at the first execution; 0 before


@dataclass(frozen=True, slots=True)
class Outcome:
    """One task handed back to the pool: a terminal result, or a request to migrate."""

    task: Task
    result: TaskResult | None  # None when the task must move to another Host
    carry: Carry | None = None
    fault: FaultClass = FaultClass.NONE  # why it moves (OOM: off its GPU, not only its Host)
    # the agent's state when its run ended: the manager's registry follows it (one owner, the
    # Host, while the agent is resident); each result's `agent_state` is the state after its task
    agent_state: AgentState | None = None


@dataclass(slots=True)
class _Run:
    task: Task
    carry: Carry
    gen: GenResult | None = None
    fault: EngineFault | None = None
    samples: tuple[str, ...] = ()  # the step's other votes


class HostRuntime(Residency):
    def __init__(
        self,
        host_id: str,
        settings: Settings,
        engine: Engine,
        store: CheckpointStore,
        assess: Assess,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_state: Callable[[str, AgentState], None] | None = None,
        on_task: Callable[[str, str], None] | None = None,
    ) -> None:
        self.host_id = host_id
        self.settings = settings
        self.engine = engine
        self.store = store
        self.assess = assess
        self.clock = clock
        self.sleep = sleep
        self.on_state = on_state  # told each move of the agent's state during `run`
        self.on_task = on_task  # told (agent id, task id) before each step of a task that executes
        self.events = EventSink(host_id)
        self.agent: AgentRecord | None = None
        self.epoch = 0
        self._dirty = False  # the agent changed since its last committed checkpoint
        self._monitor_down = False  # the monitor did not answer during this run

    # -- EXECUTE -> MONITOR -> RECOVER -----------------------------------------------------
    def run(self, tasks: list[tuple[Task, Carry | None]], headroom: float) -> list[Outcome]:
        agent = self._require()
        self._dirty = True
        done: list[Outcome] = []
        self._monitor_down = False
        runs = [r for t, c in tasks if (r := self._admit(t, c, done)) is not None]
        while runs:
            runs = [r for r in runs if self._guarded(r, done, self._execute)]
            assessed = self._assess(agent.spec.agent_id, runs, headroom, done)
            runs = self._recover(assessed, done)
        # The agent's KV lives in the engine (its slot) and goes into the checkpoint when it is
        # parked: the record committed now has none, so a KV copy committed earlier, which no
        # longer matches the memory, is gone from the checkpoint.
        final = self._require()
        self._commit(final)
        return [replace(o, agent_state=final.state) for o in done]

    # -- one task's failure is its own ----------------------------------------------------
    def _admit(self, task: Task, carry: Carry | None, done: list[Outcome]) -> _Run | None:
        """The task's run, or None (and its failed result) when its contract cannot be checked:
        a schema that reached the Host past the loader is the task's fault, not the agent's."""
        run = _Run(task, carry or Carry(params=self._require().spec.generation))

        def prepare(r: _Run) -> None:
            if r.task.json_schema is not None and (problem := schema_problem(r.task.json_schema)):
                raise UsageError(f"task {r.task.task_id}: {problem}")
            r.carry = carry or self._first_carry(r.task)

        return run if self._guarded(run, done, prepare) else None

    def _guarded(self, run: _Run, done: list[Outcome], step: Callable[[_Run], None]) -> bool:
        """Run one task's `step`; whatever it raises fails that task alone (False)."""
        try:
            step(run)
        except Exception as exc:  # MemoryError, a grammar the engine refused, a bug: not the agent's
            done.append(self._broken(run, exc))
            return False
        return True

    def _broken(self, run: _Run, exc: BaseException) -> Outcome:
        reason = one_line(exc)
        agent = self._require()
        self.events.emit("host.task_error", agent_id=agent.spec.agent_id, host=self.host_id,
                         task_id=run.task.task_id, error=reason)
        try:
            return self._finish(run, None, ok=False, error=reason)
        except Exception:  # the failure was in finishing itself: the bare result still goes back
            result = TaskResult(task_id=run.task.task_id, agent_id=agent.spec.agent_id,
                                status=TaskStatus.FAILED, attempts=run.carry.attempt + 1,
                                agent_state=self._require().state.value, error=reason)
            return Outcome(run.task, result)

    def _first_carry(self, task: Task) -> Carry:
        if self.settings.recovery.greedy_constrained_first:
            greedy = self._params(task).model_copy(update={"temperature": 0.0})
            return Carry(params=greedy, constrain=True)
        return Carry(params=self._params(task))

    def _params(self, task: Task) -> GenerationParams:
        params = self._require().spec.generation
        return params.model_copy(update={"max_tokens": task.max_tokens}) if task.max_tokens else params

    def _execute(self, run: _Run) -> None:
        agent = self._require()
        if self.on_task is not None:
            self.on_task(agent.spec.agent_id, run.task.task_id)
        if agent.state is not AgentState.RUNNING:
            self._move(Event.START)
        c = run.carry
        if not c.started:  # latency counts from the task's first execution
            c = run.carry = replace(c, started=self.clock())
        req = GenRequest(
            agent_id=agent.spec.agent_id, task_id=run.task.task_id,
            system_prompt=agent.spec.system_prompt, prompt=run.task.prompt,
            params=c.params.model_copy(update={"seed": c.params.seed + c.attempt}),  # a fresh sample
            memory=agent.memory, kind=run.task.kind, json_schema=run.task.json_schema,
            labels=run.task.labels, constrain=c.constrain,
            attempt=c.attempt, memory_compressed=c.memory_compressed, host_changed=c.host_changed,
            timeout_s=run.task.deadline_s * self.settings.recovery.deadline_factor,
        )
        run.gen, run.fault, run.samples, voted = None, None, (), 0
        try:
            run.gen = first = self.engine.generate(req)
            if extra := votes_for(self.settings.health, req):
                run.gen, run.samples, voted = vote(self.engine, req, first, extra)
        except EngineFault as fault:
            run.fault = fault
        truth = (run.gen.truth if run.gen else run.fault.truth if run.fault else GroundTruth.NONE)
        tokens = first.prompt_tokens + first.completion_tokens + voted if run.gen else 0
        run.carry = replace(c, tokens=c.tokens + tokens, vote_tokens=c.vote_tokens + voted,
                            truth=c.truth or (truth.value if truth is not GroundTruth.NONE else ""))

    def _assess(
        self, agent_id: str, runs: list[_Run], headroom: float, done: list[Outcome]
    ) -> list[tuple[_Run, Verdict]]:
        """The monitor's verdicts on a round; the Host's own when the monitor does not answer
        (for the rest of the run) or fails (for this round)."""
        signals = [self._signals(r, headroom) for r in runs]
        if runs and not self._monitor_down:
            try:
                verdicts = self.assess(agent_id, [(r.task.task_id, r.task.prompt, r.carry.attempt, s)
                                                  for r, s in zip(runs, signals, strict=True)])
                return list(zip(runs, verdicts, strict=True))
            except MonitorUnavailable as exc:  # not waited for again in this run
                self._monitor_down = True
                self.events.emit("host.monitor_unavailable", agent_id=agent_id, host=self.host_id,
                                 tasks=len(runs), reason=str(exc)[:300])
            except Exception as exc:  # a task the monitor could not assess: find it here
                self.events.emit("host.monitor_error", agent_id=agent_id, host=self.host_id,
                                 tasks=len(runs), reason=one_line(exc))
        assessed: list[tuple[_Run, Verdict]] = []
        for run, sig in zip(runs, signals, strict=True):
            def local(r: _Run, s: Signals = sig) -> None:
                assessed.append((r, self._assess_locally(r, s)))
            self._guarded(run, done, local)
        return assessed

    def _assess_locally(self, run: _Run, signals: Signals) -> Verdict:
        """The monitor's pure functions without its memory: no peers, no supervision history;
        the task's attempts and tiers come from its carry, so the attempt cap still holds."""
        report = score(signals, self.settings.health)
        history = History(attempts=run.carry.attempt, tiers_used=signals.tiers_used)
        return report, decide(report, history, self.settings.recovery, self.clock())

    def _signals(self, run: _Run, headroom: float) -> Signals:
        t = run.task
        gen = run.gen
        return Signals(
            text=gen.text if gen else "",
            finish_reason=gen.finish_reason if gen else "error",
            kind=t.kind,
            elapsed_s=gen.elapsed_s if gen else 0.0,
            deadline_s=t.deadline_s,
            memory_headroom=headroom,
            json_schema=t.json_schema,
            labels=t.labels,
            max_chars=t.max_chars,
            pattern=t.pattern,
            samples=run.samples,
            fault=run.fault.fault if run.fault else FaultClass.NONE,
            tiers_used=run.carry.tiers,  # with `attempt`: the task's recovery so far, its own
        )

    def _recover(self, assessed: list[tuple[_Run, Verdict]], done: list[Outcome]) -> list[_Run]:
        again: list[_Run] = []
        delay = 0.0
        for i, (run, (report, decision)) in enumerate(assessed):
            if decision.action is Action.FAIL_AGENT:  # FAILED first: every result must say so
                self._mark_failed(decision)
                done.append(self._finish(run, report, ok=False, error=decision.reason))
                rest = [r for r, _ in assessed[i + 1 :]]
                return self._fail_agent(rest, again, done, decision)

            def apply(r: _Run, report: HealthReport = report, decision: Decision = decision) -> None:
                if self._apply(r, report, decision, done):
                    again.append(r)

            if self._guarded(run, done, apply) and run in again:
                delay = max(delay, decision.delay_s)
        return self._back_off(again, delay, done)

    def _apply(self, run: _Run, report: HealthReport, decision: Decision, done: list[Outcome]) -> bool:
        """Apply one decision; True when the task runs again on this Host."""
        c = run.carry
        tiers = c.tiers + ((int(decision.tier),) if decision.tier else ())
        run.carry = replace(c, tiers=tiers)
        if decision.action is Action.ACCEPT:
            done.append(self._finish(run, report, ok=report.fault is FaultClass.NONE))
            return False
        if decision.action is Action.FAIL_TASK:
            done.append(self._finish(run, report, ok=False, error=decision.reason))
            return False
        self._record_recovery(run, decision)
        if decision.action is Action.MIGRATE:
            done.append(Outcome(run.task, None, self._next_carry(run, decision), report.fault))
            return False
        if decision.action is Action.COMPRESS:
            self._compress()
        run.carry = self._next_carry(run, decision)
        return True

    def _back_off(self, again: list[_Run], delay: float, done: list[Outcome]) -> list[_Run]:
        """One backoff for the round: each retry waits at least its own delay. A delay that
        cannot be slept (an extreme config) fails the tasks that asked for it."""
        if not delay or not again:
            return again
        try:
            self.sleep(delay)
        except Exception as exc:
            done.extend(self._broken(run, exc) for run in again)
            return []
        return again

    def _record_recovery(self, run: _Run, decision: Decision) -> None:
        agent = self._require()
        if agent.state is AgentState.RUNNING or agent.state is AgentState.DEGRADED:
            self._move(Event.RECOVER)
        self.events.emit("recovery.decided", agent_id=agent.spec.agent_id,
                         task_id=run.task.task_id, action=decision.action.value,
                         tier=int(decision.tier), reason=decision.reason,
                         attempt=run.carry.attempt, delay_s=round(decision.delay_s, 4))

    def _next_carry(self, run: _Run, decision: Decision) -> Carry:
        c = run.carry
        r = decision.retune
        return replace(
            c,
            params=apply_retune(c.params, r),
            attempt=c.attempt + 1,
            constrain=c.constrain or r.constrain,
            memory_compressed=c.memory_compressed or decision.action is Action.COMPRESS,
            host_changed=c.host_changed or decision.action is Action.MIGRATE,
        )

    def _compress(self) -> None:
        """Tier 2: keep the newer half of the memory (the slot's KV serves the new prompt only
        as far as it still matches it)."""
        agent = self._require()
        keep = agent.memory[len(agent.memory) // 2 :]
        self.agent = agent.model_copy(update={"memory": keep})
        self.events.emit("agent.memory_compressed", agent_id=agent.spec.agent_id,
                         turns_before=len(agent.memory), turns_after=len(keep))

    def _fail_agent(
        self, rest: list[_Run], again: list[_Run], done: list[Outcome], decision: Decision
    ) -> list[_Run]:
        self._mark_failed(decision)
        for run in rest + again:
            done.append(self._finish(run, None, ok=False, error=f"agent failed: {decision.reason}"))
        return []

    def _mark_failed(self, decision: Decision) -> None:
        if self._require().state is not AgentState.FAILED:
            self._move(Event.FAIL)
        self.agent = self._require().model_copy(update={"failed_reason": decision.reason})

    def _finish(
        self, run: _Run, report: HealthReport | None, ok: bool, error: str = ""
    ) -> Outcome:
        agent = self._require()
        if agent.state is not AgentState.FAILED:
            self._settle(report, ok)
        text = run.gen.text if run.gen else ""
        if ok:
            self._remember(run.task.prompt, text)
        if not error and not ok:
            error = (report.reason if report else "") or (str(run.fault) if run.fault else "")
        comps = report.components() if report else {}
        result = TaskResult(
            task_id=run.task.task_id, agent_id=agent.spec.agent_id,
            status=TaskStatus.SUCCEEDED if ok else TaskStatus.FAILED,
            output=text, score=report.score if report else 0.0,
            attempts=run.carry.attempt + 1, tiers=run.carry.tiers,
            agent_state=self._require().state.value,
            elapsed_s=self.clock() - run.carry.started, tokens=run.carry.tokens,
            vote_tokens=run.carry.vote_tokens,
            error=error[:500], truth=run.carry.truth, **comps,
        )
        return Outcome(run.task, result)

    def _settle(self, report: HealthReport | None, ok: bool) -> None:
        """Move the agent back to IDLE (or DEGRADED) after a task ends."""
        agent = self._require()
        healthy = ok and report is not None and report.healthy
        if agent.state is AgentState.RECOVERING:
            self._move(Event.HEALED if healthy else Event.DEGRADE)
        elif agent.state is AgentState.RUNNING:
            self._move(Event.SUCCEED if healthy else Event.DEGRADE)

    def _remember(self, prompt: str, answer: str) -> None:
        """Append the exchange to memory, bounded by the memory token budget (~4 chars/token)."""
        agent = self._require()
        turns = agent.memory + (Turn(role="user", content=prompt),
                                Turn(role="assistant", content=answer))
        budget = self.settings.engine.memory_tokens * 4
        while turns and sum(len(t.content) for t in turns) > budget:
            turns = turns[2:]
        self.agent = agent.model_copy(update={"memory": turns, "tasks_done": agent.tasks_done + 1})
