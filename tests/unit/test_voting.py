"""Self-consistency voting: the majority answer is returned; disagreement lowers consistency and
is a contract fault, which the policy retunes (greedy), where the step no longer votes."""

from __future__ import annotations

from pathlib import Path

from agents.config import HealthConfig, load_settings
from agents.engines.base import GenRequest, GenResult
from agents.errors import FaultClass
from agents.models import AgentRecord, AgentSpec, Task, TaskKind
from pool.runtime.host import HostRuntime
from pool.store.checkpoint import CheckpointStore
from recovery.health import consistency, majority, score
from recovery.monitor import Monitor
from recovery.types import Signals


def _sig(text: str, samples: tuple[str, ...]) -> Signals:
    return Signals(text=text, finish_reason="stop", kind=TaskKind.ANSWER, elapsed_s=0.1,
                   deadline_s=10, memory_headroom=0.5, samples=samples)


def test_majority_picks_the_largest_group_and_the_first_on_a_tie() -> None:
    assert majority(TaskKind.ANSWER, ["Lima", "Quito", " lima."]) == 0
    assert majority(TaskKind.ANSWER, ["Quito", "Lima", "lima"]) == 1
    assert majority(TaskKind.ANSWER, ["a", "b", "c"]) == 0
    assert majority(TaskKind.JSON, ['{"a": 1}', '{ "a" : 1 }', '{"a": 2}']) == 0


def test_disagreeing_votes_lower_consistency_and_are_a_contract_fault() -> None:
    agree = score(_sig("Lima", ("lima", "Lima.")), HealthConfig())
    split = score(_sig("Lima", ("Lima", "Quito")), HealthConfig())
    apart = score(_sig("Lima", ("Quito", "Bogota")), HealthConfig())
    assert consistency(_sig("Lima", ("Lima", "Quito"))) == 0.5
    assert agree.fault is FaultClass.NONE and agree.consistency == 1.0
    assert split.fault is FaultClass.NONE and split.score < agree.score  # a majority: accepted
    assert apart.fault is FaultClass.CONTRACT and apart.consistency == 0.0


class BySeed:
    """Answers by sampling seed and temperature: greedy says Lima, samples say what they say."""

    name = "by-seed"

    def __init__(self, answers: dict[int, str]) -> None:
        self.answers, self.calls, self.constrained = answers, [], []

    def generate(self, req: GenRequest) -> GenResult:
        self.calls.append((req.params.seed, req.params.temperature))
        self.constrained.append(req.constrain)
        text = "Lima" if req.params.temperature == 0 else self.answers[req.params.seed]
        return GenResult(text=text, finish_reason="stop", prompt_tokens=10, completion_tokens=2,
                         elapsed_s=0.01)

    def save_state(self, agent_id: str) -> bytes | None:
        return None

    def load_state(self, agent_id: str, blob: bytes | None) -> bool:
        return False

    def close(self) -> None: ...


def _run(tmp_path: Path, answers: dict[int, str], **recovery: object) -> tuple[object, BySeed]:
    settings = load_settings(overrides={"engine": {"kind": "scripted"},
                                        "recovery": {"backoff_base_s": 0.0, **recovery}})
    store = CheckpointStore(tmp_path)
    store.write(AgentRecord(spec=AgentSpec(agent_id="a1")), epoch=0)
    engine = BySeed(answers)
    monitor = Monitor(settings.health, settings.recovery, clock=lambda: 0.0)
    host = HostRuntime("h0", settings, engine, store, monitor.assess, sleep=lambda s: None)
    host.bind("a1", None, epoch=1)
    task = Task(task_id="t", agent_id="a1", prompt="Capital of Peru?", kind="answer")
    (outcome,) = host.run([(task, None)], headroom=0.5)
    return outcome.result, engine


def test_the_majority_of_three_votes_is_returned_and_its_cost_counted(tmp_path: Path) -> None:
    result, engine = _run(tmp_path, {0: "Quito", 7919: "Lima", 15838: "lima."})
    assert result.status == "succeeded" and result.output.strip(" .").lower() == "lima"
    assert result.attempts == 1 and len(engine.calls) == 3
    assert result.vote_tokens == 24 and result.tokens == 36


def test_three_different_answers_retune_to_greedy_which_does_not_vote(tmp_path: Path) -> None:
    result, engine = _run(tmp_path, {0: "Quito", 7919: "Bogota", 15838: "Caracas"})
    assert result.status == "succeeded" and result.output == "Lima" and result.attempts == 2
    assert 1 in result.tiers and engine.calls[-1][1] == 0.0 and len(engine.calls) == 4


def test_the_constrained_baseline_decodes_greedy_and_constrained_from_the_first_attempt(
    tmp_path: Path,
) -> None:
    result, engine = _run(tmp_path, {}, mode="none", greedy_constrained_first=True)
    assert engine.calls == [(0, 0.0)] and engine.constrained == [True]  # greedy: no votes
    assert result.attempts == 1 and result.output == "Lima"
