"""Typed data that comes from outside (tasks, agent specs) and the agent's own durable record.

Everything here is a frozen pydantic model with `extra="forbid"`: a bad task or spec is rejected
with a message that names the field, never half-accepted.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from agents.state import AgentState


def _not_a_path_step(agent_id: str) -> str:
    if agent_id in (".", ".."):  # the id names the agent's checkpoint folder
        raise ValueError(f"agent id {agent_id!r} is not allowed")
    return agent_id


def _runs_on_re2(pattern: str) -> str:
    """The monitor checks answers with RE2 (linear time): a pattern it refuses is bad input."""
    from recovery.contract import pattern_problem  # RE2's rules live in one place

    if problem := pattern_problem(pattern):
        raise ValueError(problem)
    return pattern


AgentId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$"),
    AfterValidator(_not_a_path_step),
]
MAX_PROMPT_CHARS = 16_000
# The most bytes one task line (or the strings of one Parquet row) may hold; a longer one is
# rejected before it is decoded. A prompt at its limit fits even fully \u-escaped (6 bytes a
# character, 96 KB), which leaves most of the room for a schema, labels and the answer key.
MAX_TASK_BYTES = 1 << 20


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GenerationParams(Frozen):
    """Sampling settings for one generation; recovery re-tunes these on a retry."""

    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(96, ge=1, le=4096, description="Token limit of the answer.")
    seed: int = Field(0, ge=0, description="Sampling seed (same seed, same output).")


class TaskKind(StrEnum):
    JSON = "json"  # answer is JSON that validates against `schema`
    LABEL = "label"  # answer is one of `labels`
    ANSWER = "answer"  # a short answer; graded by containing `expected`, when given
    FREE = "free"  # scored on coherence only


class Task(Frozen):
    """One unit of work for one agent. A JSONL line or a Parquet row."""

    task_id: str = Field(min_length=1, max_length=128, description="Unique id of the task.")
    agent_id: AgentId = Field(description="The agent that answers it.")
    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS, description="What the agent is asked."
    )
    kind: TaskKind = Field(TaskKind.FREE, description="Which contract the answer must meet.")
    json_schema: dict[str, Any] | None = Field(
        None, alias="schema", description="JSON schema of the answer (kind=json)."
    )
    labels: tuple[str, ...] | None = Field(
        None, min_length=2, description="Allowed answers (kind=label)."
    )
    expected: str | None = Field(
        None, description="Answer key, when one is known: grades the result (`correct`); the "
        "monitor and the recovery policy never see it.",
    )
    max_chars: int | None = Field(
        None, ge=1, le=100_000, description="Longest acceptable answer in characters (a contract "
        "the monitor checks).",
    )
    pattern: Annotated[str, AfterValidator(_runs_on_re2)] | None = Field(
        None, min_length=1, max_length=1000, description="The answer's shape as a regular "
        "expression in RE2 syntax, searched in the stripped answer, e.g. ^[A-Z][a-z]+$ (a "
        "contract the monitor checks, for any kind; no backreferences or lookaround).",
    )
    priority: int = Field(5, ge=0, le=9, description="0 lowest, 9 highest.")
    deadline_s: float = Field(30.0, gt=0, le=3600, description="Seconds allowed for the task.")
    max_tokens: int | None = Field(
        None, ge=1, le=4096, description="Token limit of the answer; default: the agent's."
    )

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _contract_matches_kind(self) -> Task:
        if self.kind is TaskKind.JSON and self.json_schema is None:
            raise ValueError("kind=json needs a schema")
        if self.kind is TaskKind.LABEL and not self.labels:
            raise ValueError("kind=label needs labels")
        return self


class AgentSpec(Frozen):
    """Who an agent is: its persona, priority and generation defaults."""

    agent_id: AgentId = Field(description="Stable identity of the agent.")
    system_prompt: str = Field(
        "You are a concise, helpful assistant.",
        max_length=4000,
        description="The persona, sent as the system message.",
    )
    priority: int = Field(5, ge=0, le=9, description="Residency priority: 9 is parked last.")
    generation: GenerationParams = Field(
        default_factory=GenerationParams, description="Default sampling settings."
    )


class Turn(Frozen):
    """One exchange remembered by the agent."""

    role: Literal["user", "assistant"]
    content: str


class AgentRecord(Frozen):
    """Everything an agent is, as stored in its checkpoint."""

    spec: AgentSpec
    state: AgentState = AgentState.DORMANT
    memory: tuple[Turn, ...] = ()
    notes: tuple[str, ...] = ()
    kv_state: bytes | None = Field(None, description="Engine KV snapshot, if kept.")
    tasks_done: int = Field(0, ge=0)
    failed_reason: str | None = None


class TaskStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"


class TaskResult(Frozen):
    """The one terminal record of a task (a row of results.parquet)."""

    task_id: str
    agent_id: str
    status: TaskStatus
    output: str = ""
    score: float = 0.0
    coherence: float = 0.0
    completeness: float = 0.0
    latency: float = 0.0
    memory: float = 0.0
    consistency: float = 0.0
    attempts: int = 0
    tiers: tuple[int, ...] = ()
    agent_state: str = ""
    elapsed_s: float = 0.0
    tokens: int = 0
    vote_tokens: int = 0  # of `tokens`, spent on self-consistency votes
    error: str = ""
    truth: str = ""  # ground truth of injected faults (scripted engine), else ""
    correct: bool | None = None  # graded against the task's answer key after the fact; None: no key
