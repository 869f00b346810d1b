"""Figures of a finished run, from its results and events (pure)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summarise(rows: list[dict[str, Any]], events: Iterable[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "succeeded"]
    ran = [r for r in rows if r["status"] != "rejected"]
    healed = {1: 0, 2: 0}
    for r in ok:
        if r["tiers"]:
            healed[2 if max(r["tiers"]) >= 2 else 1] += 1
    latencies = [r["elapsed_s"] for r in ran if r["attempts"]]
    tokens = sum(r["tokens"] for r in rows)
    activations, peak_residents, peak_used, limit, slots = [], 0, 0.0, 0.0, 0
    prompt_tokens = cached_tokens = kv_dropped = 0
    unavailable: list[float] = []  # per migration: from leaving its Host to bound on the next
    for e in events:
        if e.get("event") == "pool.activated":
            activations.append(e["latency_s"])
        elif e.get("event") == "pool.migrated":
            unavailable.append(e["unavailable_s"])
        elif e.get("event") == "pool.residency":
            peak_residents = max(peak_residents, e["residents"])
            peak_used = max(peak_used, e["used_mib"])
            limit, slots = e["limit_mib"], e["slots"]
        elif e.get("event") == "agent.kv_dropped":
            kv_dropped += 1
        elif e.get("event") == "engine.stats":  # vLLM's shared engines
            prompt_tokens += e.get("prompt_tokens", 0)
            cached_tokens += e.get("cached_tokens", 0)
    return {
        "tasks": len(rows),
        "succeeded": len(ok),
        "healed_tier1": healed[1],
        "healed_tier2": healed[2],
        "failed": sum(r["status"] == "failed" for r in rows),
        "rejected": sum(r["status"] == "rejected" for r in rows),
        "success_rate": len(ok) / len(ran) if ran else 0.0,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "tokens": tokens,
        "vote_tokens": sum(r.get("vote_tokens", 0) for r in rows),
        "wall_s": wall_s,
        "tokens_per_s": tokens / wall_s if wall_s else 0.0,
        "tasks_per_s": len(ran) / wall_s if wall_s else 0.0,
        "activations": len(activations),
        "activation_p50_ms": 1000 * percentile(activations, 50),
        "activation_p99_ms": 1000 * percentile(activations, 99),
        "migrations": len(unavailable),
        "migration_unavailable_p50_s": percentile(unavailable, 50),
        "peak_residents_per_gpu": peak_residents,
        "slots_per_gpu": slots,
        "peak_ledger_mib": peak_used,
        "ledger_limit_mib": limit,
        "prefix_cache_hit_rate": cached_tokens / prompt_tokens if prompt_tokens else None,
        "kv_dropped": kv_dropped,  # KV states over engine.kv_max_bytes, not kept at park
        "mean_attempts": statistics.fmean(r["attempts"] for r in ran) if ran else 0.0,
        **_grades(ran),
    }


def _grades(ran: list[dict[str, Any]]) -> dict[str, Any]:
    """The monitor's verdict against the grader's, over the tasks that have an answer key."""
    keyed = [r for r in ran if r.get("correct") is not None]
    ok = [r["status"] == "succeeded" for r in keyed]
    right = [bool(r["correct"]) for r in keyed]
    return {
        "graded": len(keyed),
        "correct": sum(right),
        "correct_rate": sum(right) / len(keyed) if keyed else None,
        # the monitor gave up on (or rejected) an answer the grader marks correct
        "false_positive_failures": sum(r and not o for o, r in zip(ok, right, strict=True)),
        # the monitor accepted an answer the grader marks wrong
        "false_negatives": sum(o and not r for o, r in zip(ok, right, strict=True)),
    }
