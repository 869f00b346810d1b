"""The Ray edge: Host and HealthMonitor actors wrap the plain runtimes.

Only this module and `pool/control/manager.py` import ray. A Host is created once, warm, with a
fractional GPU, and reused for many agents; it holds no model: it calls its GPU's shared engine
(one actor per GPU, see `agents.engines.shared`), in whose KV slot `slot` its agent lives.
While it runs a batch, it tells the manager each move of its agent's state (`PoolManager.report_state`)
and, in a batch of several tasks, which task it starts (`report_task`), fire-and-forget, tagged with
the batch's dispatch number so that the manager drops a late one.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from agents.config import Settings
from agents.engines.factory import make_engine
from agents.models import Task
from agents.state import AgentState
from pool.ops.metrics import MonitorMetrics
from pool.runtime.host import Carry, HostRuntime, MonitorUnavailable, Outcome
from pool.store.checkpoint import CheckpointStore
from pool.store.deadletters import DeadLetterTable
from recovery.monitor import Monitor
from recovery.types import Decision, HealthReport, Signals

MONITOR_NAME = "health-monitor"
MANAGER_NAME = "pool-manager"


# `measure` has its own thread: a reading must not wait for the batch the Host is running.
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, concurrency_groups={"device": 1})  # type: ignore[call-overload]
class HostActor:
    def __init__(self, host_id: str, settings: Settings, store_root: str, slot: int, slots: int) -> None:
        self.monitor = ray.get_actor(MONITOR_NAME, namespace=settings.pool.namespace)
        engine = make_engine(settings.engine, pool=settings.pool, slot=slot, slots=slots)
        store = CheckpointStore(store_root, keep=settings.pool.keep_versions)  # a path or a URI
        self.monitor_timeout_s = settings.pool.monitor_timeout_s
        self.namespace = settings.pool.namespace
        self.dispatch = 0  # the manager's number of the batch running; 0: nothing to report
        self._manager: Any = None  # looked up at the first report; False: there is none
        self.rt = HostRuntime(host_id, settings, engine, store, self._assess, on_state=self._report,
                              on_task=self._report_task)
        self.batch_size = 0  # of the batch running
        self.gpu = (ray.get_gpu_ids() or ["0"])[0]
        self.node = ray.get_runtime_context().get_node_id()

    def _assess(
        self, agent_id: str, items: list[tuple[str, str, int, Signals]]
    ) -> list[tuple[HealthReport, Decision]]:
        """The monitor's verdicts, waited for `pool.monitor_timeout_s` at most: a hung or lost
        monitor is `MonitorUnavailable`, which the runtime answers by assessing alone (as it
        answers any other error the monitor raises, for that round)."""
        ref: Any = self.monitor.assess.remote(agent_id, items)
        try:
            return ray.get(ref, timeout=self.monitor_timeout_s)  # type: ignore[no-any-return,unused-ignore]
        except (GetTimeoutError, RayActorError) as exc:
            with contextlib.suppress(RayError):  # a queued call need not run any more
                ray.cancel(ref)
            why = (f"no answer in {self.monitor_timeout_s} s" if isinstance(exc, GetTimeoutError)
                   else f"monitor lost: {type(exc).__name__}")
            raise MonitorUnavailable(why) from None
        except RayTaskError as exc:  # the monitor raised: its own error, for the task's reason
            raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None

    def _report(self, agent_id: str, state: AgentState) -> None:
        """Tell the manager a move of the agent's state during a batch. Never waited for and
        never the batch's failure: a lost report is only a late view (the batch's reply carries
        the state it ended in)."""
        self._tell("report_state", agent_id, state.value)

    def _report_task(self, agent_id: str, task_id: str) -> None:
        """Tell the manager which task of a batch of several starts a step, so that this
        process dying there is charged to it alone (fire-and-forget; a lost report charges the
        whole batch, as when nothing was said)."""
        if self.batch_size > 1:
            self._tell("report_task", agent_id, task_id)

    def _tell(self, method: str, agent_id: str, what: str) -> None:
        """Call the manager's `method` with the batch's dispatch number, never waited for; not
        outside a batch the manager dispatched, nor without a manager."""
        if not self.dispatch or (manager := self._manager_handle()) is None:
            return
        with contextlib.suppress(RayError):
            getattr(manager, method).remote(agent_id, self.dispatch, what)

    def _manager_handle(self) -> Any:
        """The pool manager's handle, looked up once (a detached actor named in our namespace)."""
        if self._manager is None:
            try:
                self._manager = ray.get_actor(MANAGER_NAME, namespace=self.namespace)
            except (ValueError, RayError):  # no manager (a benchmark's bare Host): not asked again
                self._manager = False
        return self._manager or None

    def info(self) -> dict[str, Any]:
        return {"gpu": str(self.gpu), "node": self.node, "pid": os.getpid(),
                "agent": self.rt.agent.spec.agent_id if self.rt.agent else None}

    def bind(self, agent_id: str, blob: bytes | None, epoch: int) -> dict[str, Any]:
        return {**self.rt.bind(agent_id, blob, epoch), "events": self.rt.events.drain()}

    def run(
        self, tasks: list[tuple[Task, Carry | None]], headroom: float, dispatch: int = 0
    ) -> tuple[list[Outcome], list[dict[str, Any]], int]:
        """Outcomes, the events of the run (they ride back with the results), and the tokens of
        KV the engine holds for the agent afterwards. `dispatch` tags the state reports of the
        run (0: a caller that is not the manager, nothing is reported)."""
        self.dispatch, self.batch_size = dispatch, len(tasks)
        try:
            outcomes = self.rt.run(tasks, headroom)
        finally:
            self.dispatch = 0
        return outcomes, self.rt.events.drain(), self.rt.kv_tokens()

    def park(self) -> bytes:
        return self.rt.park()

    def release(self) -> None:
        self.rt.release()

    def engine_info(self) -> dict[str, Any]:
        return self.rt.engine_info()

    def pause_engine(self) -> bool:
        return self.rt.pause_engine()

    def wake_engine(self) -> bool:
        return self.rt.wake_engine()

    @ray.method(concurrency_group="device")
    def measure(self) -> dict[str, Any]:
        return self.rt.measure()


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class MonitorActor:
    def __init__(self, settings: Settings, store_root: str | None = None) -> None:
        # FAILED agents and dead letters live in the store's table: a restart reads them back
        table = DeadLetterTable(store_root) if store_root else None
        self.m = Monitor(settings.health, settings.recovery,
                         journal=table.append if table else None)
        if table:
            self.m.replay(table.read())
        self.metrics = MonitorMetrics(settings.pool.namespace)

    def assess(
        self, agent_id: str, items: list[tuple[str, str, int, Signals]]
    ) -> list[tuple[HealthReport, Decision]]:
        verdicts = self.m.assess(agent_id, items)
        for report, decision in verdicts:
            self.metrics.assessed(report.score, int(decision.tier), decision.action.value)
        return verdicts

    def release(self, agent_id: str) -> bool:
        return self.m.release(agent_id)

    def mark_failed(self, agent_id: str, reason: str) -> None:
        self.m.mark_failed(agent_id, reason)

    def failed(self) -> dict[str, Any]:
        return {"agents": dict(self.m.failed), "dead_letters": list(self.m.dead_letters[-1000:])}

    def inspect(self, agent_id: str) -> dict[str, Any]:
        return self.m.inspect(agent_id)

    def drain_events(self) -> list[dict[str, Any]]:
        return self.m.events.drain()
