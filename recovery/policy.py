"""Recovery policy: a `HealthReport` and the agent's supervision `History` -> a `Decision`.

Theory of operation. A report without a fault is accepted and changes nothing. Every other
decision is one recovery attempt: it counts against the task (`attempts`, capped by
`max_attempts`, after which the task is dead-lettered). Tier-2 actions (compress, migrate)
restart the agent's context and also count against the agent (`restarts`, their times inside the
sliding supervision window); tier-1 retries do not, since re-sampling a bad answer says nothing
about the agent's own health. In TIERED mode each fault class maps to a base tier: tier 1
retries on the same Host with re-tuned sampling, tier 2 compresses the agent's memory or
migrates it, PERMANENT fails the task at once. A task that has already used tier 1 twice moves
up to tier 2 (COMPRESS first, then MIGRATE). Supervision follows Erlang/OTP: a restart that
makes more than `intensity` restarts inside the last `period_s` seconds raises the agent's floor
by one tier for the decisions after it, and no decision goes below the floor; a floor of SEVERE
fails the agent itself. A healthy answer forgives the oldest restart in the window, and a window
without restarts resets the floor: a busy agent whose tasks fault now and then is not failed for
its throughput (restarts per second grow with tasks per second), a poison agent, which answers
nothing healthy between its restarts, still is. Backoff grows exponentially
with the attempt number, with jitter drawn from a `random.Random` seeded by the config and the
history, so the same inputs give the same delay. NONE and NAIVE modes are the baselines the
benchmarks compare against. Pure: the clock is `now`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Final

from agents.config import RecoveryConfig, RecoveryMode
from agents.errors import FaultClass
from agents.models import GenerationParams
from recovery.types import Action, Decision, HealthReport, History, Retune, Tier

ACTION_SEVERITY: Final[Mapping[Action, int]] = MappingProxyType(
    {
        Action.ACCEPT: 0,
        Action.RETRY: 1,
        Action.COMPRESS: 2,
        Action.MIGRATE: 3,
        Action.FAIL_TASK: 4,
        Action.FAIL_AGENT: 5,
    }
)
FAULT_SEVERITY: Final[Mapping[FaultClass, int]] = MappingProxyType(
    {
        FaultClass.NONE: 0,
        FaultClass.GARBAGE: 1,
        FaultClass.CONTRACT: 1,
        FaultClass.TRUNCATED: 1,
        FaultClass.TIMEOUT: 1,
        FaultClass.OOM: 2,
        FaultClass.CRASH: 2,
        FaultClass.PERMANENT: 3,
    }
)
MAX_TOKENS: Final = 4096  # the GenerationParams bound
_MINOR_BEFORE_ESCALATION = 2  # tier-1 attempts on one task before tier 2 is tried

_RETRYING = frozenset({Action.RETRY, Action.COMPRESS, Action.MIGRATE})


def apply_retune(params: GenerationParams, retune: Retune) -> GenerationParams:
    """New sampling settings for the next attempt (token limit capped at 4096)."""
    temperature = params.temperature if retune.temperature is None else retune.temperature
    max_tokens = round(params.max_tokens * retune.max_tokens_factor)
    return params.model_copy(
        update={
            "temperature": min(2.0, max(0.0, temperature)),
            "max_tokens": min(MAX_TOKENS, max(1, max_tokens)),
        }
    )


def _record(history: History, cfg: RecoveryConfig, now: float) -> History:
    """One more attempt: count it and slide the supervision window (a quiet window resets the floor)."""
    window = tuple(t for t in history.restarts if t >= now - cfg.period_s)
    floor = history.floor if window else Tier.NONE
    return replace(history, attempts=history.attempts + 1, restarts=window, floor=floor)


def _restart(history: History, cfg: RecoveryConfig, now: float) -> History:
    """A tier-2 restart of the agent's context; past `intensity` in the window, escalate. The
    decisions of one round (one `now`) restart the context once, however many tasks it had."""
    if history.restarts and history.restarts[-1] == now:
        return history
    history = replace(history, restarts=(*history.restarts, now))
    if len(history.restarts) <= cfg.intensity:
        return history
    return replace(history, floor=Tier(min(Tier.SEVERE, history.floor + 1)))


def _forgive(history: History) -> History:
    """A healthy answer forgives the oldest restart in the window; none left, no floor."""
    if not history.restarts:
        return history
    rest = history.restarts[1:]
    return replace(history, restarts=rest, floor=history.floor if rest else Tier.NONE)


def _backoff(history: History, cfg: RecoveryConfig) -> float:
    delay = min(cfg.backoff_max_s, cfg.backoff_base_s * 2.0 ** (history.attempts - 1))
    rng = random.Random(f"{cfg.seed}:{history.attempts}:{len(history.restarts)}")
    return delay * (1.0 + cfg.jitter * rng.uniform(-1.0, 1.0))


def _minor_retune(fault: FaultClass, history: History) -> Retune:
    """The tier-1 re-tune for a fault; `history` is before this attempt."""
    if fault is FaultClass.GARBAGE:
        return Retune(temperature=0.2 if history.attempts == 0 else 0.0)
    if fault is FaultClass.CONTRACT:
        return Retune(temperature=0.0, constrain=True)
    if fault is FaultClass.TRUNCATED:
        return Retune(max_tokens_factor=2.0)
    return Retune()  # TIMEOUT: same parameters, after a backoff


def _base_tier(fault: FaultClass, history: History) -> Tier:
    if fault is FaultClass.PERMANENT:
        return Tier.SEVERE
    if fault in (FaultClass.OOM, FaultClass.CRASH):
        return Tier.RESOURCES
    if history.tiers_used.count(Tier.MINOR) >= _MINOR_BEFORE_ESCALATION:
        return Tier.RESOURCES
    return Tier.MINOR


def _resource_action(fault: FaultClass, history: History) -> Action:
    """COMPRESS first, MIGRATE once a tier-2 attempt has not helped (or the engine crashed)."""
    if fault is FaultClass.CRASH or Tier.RESOURCES in history.tiers_used:
        return Action.MIGRATE
    return Action.COMPRESS


def _tiered(fault: FaultClass, before: History, after: History) -> tuple[Action, Tier, Retune]:
    tier = max(_base_tier(fault, before), after.floor)
    if tier is Tier.SEVERE:  # PERMANENT; a SEVERE floor was handled by the caller
        return Action.FAIL_TASK, Tier.SEVERE, Retune()
    retune = _minor_retune(fault, before)
    if tier is Tier.MINOR:
        return Action.RETRY, Tier.MINOR, retune
    action = _resource_action(fault, before)
    return action, Tier.RESOURCES, replace(retune, drop_kv=action is Action.COMPRESS)


def _choose(
    report: HealthReport, before: History, after: History, cfg: RecoveryConfig
) -> tuple[Action, Tier, Retune]:
    if after.floor is Tier.SEVERE:
        return Action.FAIL_AGENT, Tier.SEVERE, Retune()
    if cfg.mode is RecoveryMode.NONE or after.attempts >= cfg.max_attempts:
        return Action.FAIL_TASK, Tier.SEVERE, Retune()
    if cfg.mode is RecoveryMode.NAIVE:
        return Action.RETRY, Tier.MINOR, Retune()
    return _tiered(report.fault, before, after)


def _explain(report: HealthReport, action: Action, before: History, after: History) -> str:
    text = f"{report.fault}: {action} (attempt {after.attempts})"
    if after.floor > before.floor:
        text += f"; floor raised to tier {int(after.floor)} ({len(after.restarts)} restarts)"
    return text


def decide(report: HealthReport, history: History, cfg: RecoveryConfig, now: float) -> Decision:
    """What to do after one execution; the returned history replaces the agent's."""
    if report.fault is FaultClass.NONE:
        if not report.healthy:
            return Decision(Action.ACCEPT, Tier.NONE, history,
                            f"accepted below the healthy bar: {report.reason}")
        return Decision(Action.ACCEPT, Tier.NONE, _forgive(history), "healthy")
    after = _record(history, cfg, now)
    action, tier, retune = _choose(report, history, after, cfg)
    if action in (Action.COMPRESS, Action.MIGRATE):
        after = _restart(after, cfg, now)
    after = replace(after, tiers_used=(*after.tiers_used, int(tier)))
    delay = _backoff(after, cfg) if action in _RETRYING else 0.0
    reason = _explain(report, action, history, after)
    return Decision(action, tier, after, reason, delay_s=delay, retune=retune)
