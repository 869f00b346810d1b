"""Errors say whose fault they are.

`UsageError`: bad input or config; never retried, shown as one line.
`EngineFault`: the model or the device misbehaved; carries a fault class and feeds recovery.
`StorageError`: a checkpoint or ledger could not be written or read back.
"""

from __future__ import annotations

from enum import StrEnum


class FaultClass(StrEnum):
    """What went wrong in one execution; `NONE` when nothing did."""

    NONE = "none"
    GARBAGE = "garbage"  # degenerate output (repeats, control characters, empty)
    CONTRACT = "contract"  # coherent, but breaks the task's contract (schema, labels, answer)
    TRUNCATED = "truncated"  # cut off by the token limit
    TIMEOUT = "timeout"  # past the deadline
    OOM = "oom"  # out of (V)RAM or context window
    CRASH = "crash"  # engine or Host process died
    PERMANENT = "permanent"  # the agent cannot do this task, whatever we try


class GroundTruth(StrEnum):
    """What kind of fault the scripted engine injected: lets benchmarks count false positives."""

    NONE = "none"
    TRANSIENT = "transient"
    RESOURCE = "resource"
    PERMANENT = "permanent"


class SelfhealError(Exception):
    """Base of the project's errors."""


class UsageError(SelfhealError):
    """Bad input or configuration: a person must fix it; never retried."""


class EngineFault(SelfhealError):
    """The model or the device misbehaved; recovery decides what to do."""

    def __init__(self, fault: FaultClass, message: str, truth: GroundTruth = GroundTruth.NONE):
        super().__init__(message)
        self.fault = fault
        self.truth = truth

    def __reduce__(self) -> tuple[object, ...]:  # survive pickling across Ray processes
        return (type(self), (self.fault, str(self), self.truth))


class StorageError(SelfhealError):
    """A checkpoint or ledger could not be written or read back."""


class CheckpointCorrupt(StorageError):
    """A checkpoint file failed its checksum or Arrow validation."""


class StaleEpoch(StorageError):
    """A write carried an older epoch than the committed one (a zombie Host)."""
