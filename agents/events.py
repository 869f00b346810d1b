"""Structured events: one structlog JSON line per decision, and a buffer the driver drains.

Actors log to their own stdout (Ray's worker logs, visible in the dashboard) and keep the same
events in a bounded buffer, which the batch driver collects into `events.jsonl`.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import structlog

_configured = False


def configure_logging() -> None:
    """JSON lines with an ISO timestamp and level; safe to call more than once."""
    global _configured
    if _configured:
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        cache_logger_on_first_use=False,
    )
    _configured = True


class EventSink:
    """Logs each event and keeps it for `drain()`; oldest dropped past `capacity`."""

    def __init__(self, source: str, capacity: int = 200_000) -> None:
        configure_logging()
        self.source = source
        self._buffer: deque[dict[str, Any]] = deque(maxlen=capacity)

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "ts": time.time(), "source": self.source, **fields}
        self._buffer.append(record)
        structlog.get_logger().info(event, source=self.source, **fields)

    def extend(self, records: list[dict[str, Any]]) -> None:
        self._buffer.extend(records)

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while self._buffer:  # popleft is atomic: nothing appended meanwhile is lost
            out.append(self._buffer.popleft())
        return out
