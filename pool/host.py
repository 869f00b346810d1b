"""What a Host does for its one resident agent: EXECUTE -> MONITOR -> RECOVER.

A Host holds at most one agent (an `AgentRecord` plus its epoch). `run` executes a batch of the
agent's tasks in rounds: every pending task is executed once, all outcomes go to the monitor in
one call (`assess`), and each decision is applied: accept, retry re-tuned, compress memory, hand
the task back for migration, or give up. Every round is bounded by the policy's attempt cap.
Results leave the Host only after the agent's new state is a committed checkpoint.

A monitor that does not answer in time (`MonitorUnavailable`) is not waited for again in the
batch: the Host scores and decides alone with the same pure functions, without peers, each
task's attempts taken from its carry.

No Ray here: the Ray actor in `pool/actors.py` wraps this class, so tests drive it directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from agents import codec
from agents.config import Settings
from agents.engines.base import Engine, GenRequest, GenResult
from agents.engines.gpumem import nvml_reading
from agents.errors import EngineFault, FaultClass, GroundTruth, SelfhealError, UsageError
from agents.events import EventSink
from agents.models import AgentRecord, GenerationParams, Task, TaskResult, TaskStatus, Turn
from agents.state import RESIDENT, AgentState, Event, next_state
from pool.checkpoint import CheckpointStore
from pool.voting import vote, votes_for
from recovery.health import score
from recovery.policy import apply_retune, decide
from recovery.types import Action, Decision, HealthReport, History, Signals

Verdict = tuple[HealthReport, Decision]
# (agent_id, [(task_id, prompt, attempt, signals)]) -> [(report, decision)]; raises
# MonitorUnavailable when the monitor does not answer in time
Assess = Callable[[str, list[tuple[str, str, int, Signals]]], list[Verdict]]
QUIET = frozenset({(AgentState.IDLE, AgentState.RUNNING), (AgentState.RUNNING, AgentState.IDLE)})


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


@dataclass(slots=True)
class _Run:
    task: Task
    carry: Carry
    gen: GenResult | None = None
    fault: EngineFault | None = None
    samples: tuple[str, ...] = ()  # the step's other votes


class HostRuntime:
    def __init__(
        self,
        host_id: str,
        settings: Settings,
        engine: Engine,
        store: CheckpointStore,
        assess: Assess,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.host_id = host_id
        self.settings = settings
        self.engine = engine
        self.store = store
        self.assess = assess
        self.clock = clock
        self.sleep = sleep
        self.events = EventSink(host_id)
        self.agent: AgentRecord | None = None
        self.epoch = 0
        self._dirty = False  # the agent changed since its last committed checkpoint
        self._monitor_down = False  # the monitor did not answer during this run

    # -- residency -------------------------------------------------------------------------
    def bind(self, agent_id: str, blob: bytes | None, epoch: int) -> dict[str, Any]:
        """Make `agent_id` resident: from hot-tier bytes when given, else from disk."""
        started = time.perf_counter()
        if self.agent is not None:
            raise UsageError(f"{self.host_id} already hosts {self.agent.spec.agent_id}")
        record = codec.decode(blob) if blob is not None else self.store.read(agent_id)[0]
        tier = "hot" if blob is not None else "disk"
        if record.state is AgentState.FAILED:  # a person must release it first
            return {"elapsed_s": time.perf_counter() - started, "kv_restored": False,
                    "state": record.state.value, "tier": tier}
        if record.state in RESIDENT:  # committed while resident on a Host that is gone
            record = record.model_copy(update={"state": next_state(record.state, Event.HOST_LOST)})
        kv = record.kv_state if self.settings.engine.kv_snapshot else None
        kv_restored = self.engine.load_state(agent_id, kv)  # None: the slot starts empty
        self.agent = record.model_copy(update={"state": next_state(record.state, Event.ACTIVATE)})
        self.epoch = epoch
        elapsed = time.perf_counter() - started
        self.events.emit("agent.activated", agent_id=agent_id, host=self.host_id, epoch=epoch,
                         tier=tier, kv_restored=kv_restored, elapsed_s=round(elapsed, 6))
        return {"elapsed_s": elapsed, "kv_restored": kv_restored, "state": self.agent.state.value,
                "tier": tier, "kv_tokens": self.kv_tokens()}

    def park(self) -> bytes:
        """Commit the agent's checkpoint and unbind it; returns the bytes for the hot tier."""
        agent = self._require()
        kv = self._slot_kv() if self._keeps_kv() else agent.kv_state
        parked = agent.model_copy(update={"state": next_state(agent.state, Event.PARK),
                                          "kv_state": kv})
        # After a run the agent is already committed (in a resident state, which a later bind
        # reads as a lost Host): only the hot-tier copy needs the DORMANT state, unless the
        # engine's KV of the agent goes into the checkpoint now.
        changed = self._dirty or kv != agent.kv_state
        data = self._commit(parked) if changed else codec.encode(parked)
        self.agent = None
        return data

    def release(self) -> None:
        """Forget the agent without writing (its state is already committed)."""
        self.agent = None

    # -- the engine's device (optional engine methods, see agents.engines.base) ------------
    def engine_info(self) -> dict[str, Any]:
        info = getattr(self.engine, "info", None)
        return dict(info()) if info else {}

    def pause_engine(self) -> bool:
        """Give the GPU back keeping the engine; False when the engine cannot sleep."""
        sleep = getattr(self.engine, "sleep", None)
        return bool(sleep()) if sleep else False

    def wake_engine(self) -> bool:
        wake = getattr(self.engine, "wake_up", None)
        return bool(wake()) if wake else False

    def measure(self) -> dict[str, Any]:
        """The engine's reading of its GPU, else pynvml's reading of this process."""
        measure = getattr(self.engine, "measure", None)
        return dict(measure()) if measure else nvml_reading()

    def kv_tokens(self) -> int:
        """Tokens of KV the engine holds for the resident agent (0 for engines that do not say)."""
        return int(getattr(self.engine, "kv_tokens", 0))

    def _commit(self, record: AgentRecord) -> bytes:
        data = codec.encode(record)
        self.store.write_bytes(record.spec.agent_id, data, self.epoch)
        self._dirty = False
        return data

    def _require(self) -> AgentRecord:
        if self.agent is None:
            raise UsageError(f"{self.host_id} hosts no agent")
        return self.agent

    def _move(self, event: Event) -> None:
        agent = self._require()
        new = next_state(agent.state, event)
        if (agent.state, new) not in QUIET:
            self.events.emit("agent.state_changed", agent_id=agent.spec.agent_id,
                             old=agent.state.value, new=new.value, host=self.host_id)
        self.agent = agent.model_copy(update={"state": new})

    # -- EXECUTE -> MONITOR -> RECOVER -----------------------------------------------------
    def run(self, tasks: list[tuple[Task, Carry | None]], headroom: float) -> list[Outcome]:
        agent = self._require()
        self._dirty = True
        runs = [_Run(t, c or self._first_carry(t)) for t, c in tasks]
        done: list[Outcome] = []
        self._monitor_down = False
        while runs:
            for run in runs:
                self._execute(run)
            verdicts = self._assess(agent.spec.agent_id, runs, headroom)
            runs = self._recover(runs, verdicts, done)
        # The agent's KV now lives in the engine (its slot) and goes into the checkpoint when it
        # is parked; a KV copy committed earlier no longer matches the memory committed now.
        self.agent = self._require().model_copy(update={"kv_state": None})
        self._commit(self.agent)
        return done

    def _keeps_kv(self) -> bool:
        return self.settings.engine.kv_snapshot and self._require().state is not AgentState.FAILED

    def _slot_kv(self) -> bytes | None:
        """The engine's KV of the agent for its checkpoint; None when over `kv_max_bytes`."""
        agent, cfg = self._require(), self.settings.engine
        blob = self.engine.save_state(agent.spec.agent_id)
        if blob is not None and len(blob) > cfg.kv_max_bytes:
            self.events.emit("agent.kv_dropped", agent_id=agent.spec.agent_id, bytes=len(blob),
                             kv_max_bytes=cfg.kv_max_bytes, tokens=self.kv_tokens())
            return None  # the next activation re-reads persona and memory
        return blob

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
            labels=run.task.labels, expected=run.task.expected, constrain=c.constrain,
            attempt=c.attempt, memory_compressed=c.memory_compressed, host_changed=c.host_changed,
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

    def _assess(self, agent_id: str, runs: list[_Run], headroom: float) -> list[Verdict]:
        """The monitor's verdicts on a round; the Host's own when the monitor does not answer."""
        signals = [self._signals(r, headroom) for r in runs]
        if not self._monitor_down:
            try:
                return self.assess(agent_id, [(r.task.task_id, r.task.prompt, r.carry.attempt, s)
                                              for r, s in zip(runs, signals, strict=True)])
            except MonitorUnavailable as exc:  # not waited for again in this run
                self._monitor_down = True
                self.events.emit("host.monitor_unavailable", agent_id=agent_id, host=self.host_id,
                                 tasks=len(runs), reason=str(exc)[:300])
        return [self._assess_locally(r, s) for r, s in zip(runs, signals, strict=True)]

    def _assess_locally(self, run: _Run, signals: Signals) -> Verdict:
        """The monitor's pure functions without its memory: no peers, no supervision history;
        the task's attempts and tiers come from its carry, so the attempt cap still holds."""
        report = score(signals, self.settings.health)
        history = History(attempts=run.carry.attempt, tiers_used=run.carry.tiers)
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
        )

    def _recover(
        self, runs: list[_Run], verdicts: list[Verdict], done: list[Outcome]
    ) -> list[_Run]:
        again: list[_Run] = []
        delay = 0.0
        for i, (run, (report, decision)) in enumerate(zip(runs, verdicts, strict=True)):
            c = run.carry
            tiers = c.tiers + ((int(decision.tier),) if decision.tier else ())
            run.carry = replace(c, tiers=tiers)
            if decision.action is Action.ACCEPT:
                done.append(self._finish(run, report, ok=report.fault is FaultClass.NONE))
            elif decision.action is Action.FAIL_TASK:
                done.append(self._finish(run, report, ok=False, error=decision.reason))
            elif decision.action is Action.FAIL_AGENT:  # FAILED first: every result must say so
                self._mark_failed(decision)
                done.append(self._finish(run, report, ok=False, error=decision.reason))
                return self._fail_agent(runs[i + 1 :], again, done, decision)
            else:
                self._record_recovery(run, decision)
                delay = max(delay, decision.delay_s)
                if decision.action is Action.MIGRATE:
                    done.append(Outcome(run.task, None, self._next_carry(run, decision), report.fault))
                    continue
                if decision.action is Action.COMPRESS:
                    self._compress()
                run.carry = self._next_carry(run, decision)
                again.append(run)
        if delay and again:  # one backoff for the round: each retry waits at least its own delay
            self.sleep(delay)
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
        """Tier 2: keep the newer half of the memory and drop the KV snapshot."""
        agent = self._require()
        keep = agent.memory[len(agent.memory) // 2 :]
        self.agent = agent.model_copy(update={"memory": keep, "kv_state": None})
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
