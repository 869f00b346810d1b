"""Self-consistency voting: sample a step k times with other seeds, return the majority answer.

Which tasks vote is `health.vote_when`; free text never does (two good essays never agree word for
word). A step at temperature 0 does not vote: its samples would be the same answer k times. The
other votes go to the monitor as `Signals.samples`, where low agreement lowers consistency and,
under `health.consistency_floor`, is a contract fault (the model is guessing: tier 1 retunes).
"""

from __future__ import annotations

from dataclasses import replace

from agents.config import HealthConfig, VoteWhen
from agents.engines.base import Engine, GenRequest, GenResult
from agents.errors import EngineFault
from agents.models import TaskKind
from recovery.health import majority

_VOTING = {VoteWhen.NEVER: frozenset(), VoteWhen.ANSWERS: frozenset({TaskKind.ANSWER}),
           VoteWhen.CONTRACTED: frozenset({TaskKind.ANSWER, TaskKind.LABEL, TaskKind.JSON})}
_SEED_STRIDE = 7919  # a vote's seed: far from the seeds of later attempts (seed + attempt)


def votes_for(cfg: HealthConfig, req: GenRequest) -> int:
    """Extra samples this step takes (0: it does not vote)."""
    if cfg.votes < 2 or req.kind not in _VOTING[cfg.vote_when] or req.params.temperature <= 0:
        return 0
    return cfg.votes - 1


def vote(engine: Engine, req: GenRequest, first: GenResult, extra: int
         ) -> tuple[GenResult, tuple[str, ...], int]:
    """(the majority's generation, the other answers, tokens the extra samples cost)."""
    gens, tokens = [first], 0
    for i in range(1, extra + 1):
        seed = req.params.seed + _SEED_STRIDE * i
        try:
            g = engine.generate(replace(req, params=req.params.model_copy(update={"seed": seed})))
        except EngineFault:
            continue  # a vote lost to a fault says nothing; the step's own fault is the first's
        gens.append(g)
        tokens += g.prompt_tokens + g.completion_tokens
    win = majority(req.kind, [g.text for g in gens])
    return gens[win], tuple(g.text for i, g in enumerate(gens) if i != win), tokens
