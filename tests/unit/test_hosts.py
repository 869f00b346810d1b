"""The Host wrapper (`pool.control.hosts.HostClient`) without Ray: a fake handle whose methods answer
with futures the test settles, fails or leaves pending."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

from ray.exceptions import ActorUnschedulableError, ObjectLostError, RayActorError, RayTaskError

from agents.errors import StaleEpoch
from pool.control.hosts import Done, Failed, Gone, HostClient, Stalled

SILENT = object()  # a Host that does not answer until the test says so


class _Method:
    """A fake actor method: records each call (its args and options) and answers with the next
    of `answers` (a value, an exception, or SILENT: a future the test settles via `pending`)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[Any, ...]] = []
        self.named: list[str] = []
        self.pending: list[Future[Any]] = []

    def options(self, **kw: Any) -> _Method:
        self.named.append(kw["name"])
        return self

    def remote(self, *args: Any) -> Any:
        self.calls.append(args)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        fut: Future[Any] = Future()
        if answer is SILENT:
            self.pending.append(fut)
        elif isinstance(answer, BaseException):
            fut.set_exception(answer)
        else:
            fut.set_result(answer)
        return type("Ref", (), {"future": lambda _self: fut})()


class _Handle:
    def __init__(self, **methods: _Method) -> None:
        for name, method in methods.items():
            setattr(self, name, method)


def _client(watchdog_s: float = 5.0, **methods: _Method) -> HostClient:
    return HostClient(_Handle(**methods), "host-n1-0-0", watchdog_s)


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


STALE = RayTaskError("run", "traceback", StaleEpoch("agent a1: write with epoch 2 refused"))


def test_a_hosts_answer_and_its_errors_become_replies() -> None:
    assert _run(_client(park=_Method(b"bytes")).park()) == Done(b"bytes")
    assert isinstance(_run(_client(park=_Method(RayActorError())).park()), Gone)
    assert isinstance(_run(_client(park=_Method(ActorUnschedulableError("node gone"))).park()), Gone)
    failed = _run(_client(park=_Method(RayTaskError("park", "tb", OSError("disk full")))).park())
    assert failed == Failed("OSError: disk full", stale=False)
    stale = _run(_client(park=_Method(STALE)).park())
    assert isinstance(stale, Failed) and stale.stale and stale.error.startswith("StaleEpoch")


def test_run_names_the_call_after_its_agent_and_passes_the_batch_and_its_dispatch() -> None:
    run = _Method(([], [{"event": "e"}], 12))
    reply = _run(_client(run=run).run("a1", ["task"], 0.5, 7))
    assert reply == Done(([], [{"event": "e"}], 12))
    assert run.named == ["a1.run"] and run.calls == [(["task"], 0.5, 7)]


def test_a_silent_host_stalls_at_the_watchdog_and_its_late_answer_is_a_reply() -> None:
    run = _Method(SILENT)

    async def go() -> tuple[Any, Any]:
        reply = await _client(0.05, run=run).run("a1", [], 1.0, 1)
        assert isinstance(reply, Stalled) and not reply.answer.done()
        run.pending[0].set_exception(RayActorError())  # it dies later: still no error raised
        return reply, await reply.answer

    reply, late = _run(go())
    assert isinstance(reply, Stalled) and isinstance(late, Gone)


def test_a_hot_bind_whose_object_is_lost_binds_from_disk_under_one_watchdog() -> None:
    bound = {"tier": "disk"}
    bind = _Method(ObjectLostError("ab" * 14, None, ""), bound)
    assert _run(_client(bind=bind).bind("a1", "hot-ref", 3)) == Done(bound)
    assert bind.calls == [("a1", "hot-ref", 3), ("a1", None, 3)]
    gone = _Method(RayActorError())
    assert isinstance(_run(_client(bind=gone).bind("a1", "hot-ref", 3)), Gone)
    assert gone.calls == [("a1", "hot-ref", 3)], "a dead Host is not asked again"


def test_release_is_submitted_at_once_and_never_raises_awaited_or_not() -> None:
    release = _Method(RayActorError())

    async def go() -> Any:
        client = _client(release=release)
        client.release()  # fire and forget
        assert len(release.calls) == 1, "submitted before anything else runs"
        return await client.release()

    assert isinstance(_run(go()), Gone) and len(release.calls) == 2


def test_probes_take_their_callers_timeout_and_revive_waits_for_an_answer() -> None:
    measure = _Method(SILENT)
    assert isinstance(_run(_client(60, measure=measure).measure(0.01)), Stalled)
    info = _Method(RayActorError(), RayTaskError("info", "tb", RuntimeError("starting")), {"gpu": "0"})
    assert _run(_client(info=info).revive(tries=5, pause_s=0)) is True
    assert len(info.calls) == 3, "it stops asking once the Host answers"
    never = _Method(RayActorError())
    assert _run(_client(info=never).revive(tries=4, pause_s=0)) is False
    assert len(never.calls) == 4
