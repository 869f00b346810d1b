"""The whole suite: end the pytest process without interpreter finalization.

After the last module's `ray.shutdown()`, Ray's gRPC threads can still be unwinding when Python
finalizes its modules; a full-suite CI run once passed every test (608) and then died with
SIGSEGV in such a thread (the kernel log showed it executing a gRPC target string), so `make
test` failed on a green suite. Once pytest has printed its summary, nothing is left to do but
exit: `os._exit` with pytest's own exit status skips the finalization that races those threads.
"""

from __future__ import annotations

import os
import sys

import pytest

_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if not _status:  # no session ran (--help, collection errors before it): exit as usual
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_status[-1])
