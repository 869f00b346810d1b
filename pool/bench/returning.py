"""Returning agents with long context: where the pool's durable per-agent KV matters (issue 11, 5).

N agents, each with its own persona of about P tokens (a seeded ledger of facts, distinct per
agent), each visited V times. Visits go round-robin over all agents, pass by pass: between two
visits of one agent come the N - 1 others, so nothing of that agent is left in a slot by chance
once N is well above the slots. Each visit asks one question about the agent's ledger.

The pool (the llama.cpp engine, the shipped GGUF) keeps each agent's persona and turns in its
memory and its KV in its slot; a parked agent's KV goes into its checkpoint and comes back into a
slot when it is bound again, so a returning agent evaluates only its new tokens. llama-server
(xllamacpp in-process, the same GGUF, threads and slots, `cache_prompt` on and its host-RAM
prompt cache at `server_cache_mib`, by default its own default of 8 GiB) gets each agent's full
context per request: persona, that agent's earlier turns (its own answers) and the question.

Both sides run in the same process tree and alternate pass by pass (the side that goes first
alternates too), after an untimed warm-up each. Throughput counts a side's passes end to end
(the pool's binds, restores and parks inside); task latency is the generation's own on both
sides (`TaskResult.elapsed_s` / the request's time on its slot); prompt tokens evaluated are
llama-server's own counter (`prompt_tokens_total`) on each side's engine, before and after each
pass. Answers are greedy and short (`answer_tokens`), so the prompt dominates the work.

llama-server's default 8 GiB cache holds about two thirds of 480 contexts of ~1,150 tokens, so a
round-robin over them never hits it; with a few agents it holds them all. A small run that should
say something about 480 agents scales `server_cache_mib` to the same share of its contexts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agents.engines.base import GenRequest, GenResult
from agents.errors import UsageError
from agents.models import AgentSpec, GenerationParams, Task, TaskKind, TaskStatus, Turn
from pool.bench.common import SERVER_CACHE_MIB, Say, on_free_slots, ratio, stats

TARGET_RATIO = 3.0  # issue 11: the pool's throughput >= 3x the peer's
CHARS_PER_TOKEN = 3.0  # of these ledgers with SmolLM2's tokenizer (measured: 2.98)
_ADJ = ("red", "blue", "green", "silver", "copper", "old", "small", "heavy", "bright", "dusty",
        "round", "narrow", "golden", "wooden", "quiet", "frozen")
_THING = ("lamp", "map", "key", "book", "rope", "bell", "cup", "box", "coat", "drum", "kettle",
          "compass", "ladder", "basket")
_PLACE = ("the harbor", "the market", "the tower", "the bridge", "the forest", "the mill",
          "the garden", "the station", "the chapel", "the farm", "the quarry", "the school")


@dataclass(frozen=True)
class ReturningSizes:
    agents: int = 480
    visits: int = 3
    persona_tokens: int = 1000
    answer_tokens: int = 24  # greedy; short, so that prompt evaluation dominates both sides
    server_cache_mib: int = SERVER_CACHE_MIB
    seed: int = 0


# -- the workload (pure) ----------------------------------------------------------------------
def estimate_tokens(text: str) -> int:
    return round(len(text) / CHARS_PER_TOKEN)


def persona(agent: int, tokens: int, seed: int) -> str:
    """Agent `agent`'s persona: a header and numbered facts, about `tokens` tokens in all."""
    rng = random.Random(f"returning:{seed}:{agent}")
    lines = [f"You are agent {agent:05d}, keeper of a private ledger. Answer each question about "
             "it in one short sentence.", "Ledger:"]
    size = sum(len(x) + 1 for x in lines)
    k = 1
    while size / CHARS_PER_TOKEN < tokens:
        line = (f"{k}. The {rng.choice(_ADJ)} {rng.choice(_THING)} from {rng.choice(_PLACE)} "
                f"weighs {rng.randrange(2, 1000)} kg.")
        lines.append(line)
        size += len(line) + 1
        k += 1
    return "\n".join(lines)


def question(agent: int, visit: int, text: str, seed: int) -> str:
    """Visit `visit`'s question to `agent` about one fact of its persona `text`."""
    facts = len(text.splitlines()) - 2
    item = random.Random(f"question:{seed}:{agent}:{visit}").randrange(1, max(facts, 1) + 1)
    return f"Visit {visit + 1}. Ledger item {item}: how much does it weigh, and where is it from?"


def visit_order(agents: int, visits: int) -> list[tuple[int, int]]:
    """(visit, agent) in order: round-robin, so an agent's next visit comes after N - 1 others."""
    return [(v, a) for v in range(visits) for a in range(agents)]


def context_tokens(persona_tokens: int, visits: int, answer_tokens: int) -> int:
    """A slot's context for persona and every turn (question, answer, chat template), in whole
    256-token blocks, and never under the engine's default of 2048."""
    need = persona_tokens * 1.15 + visits * (answer_tokens + 40) + 64
    return max(2048, 256 * math.ceil(need / 256))


# -- the figures (pure) -----------------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    """One side's pass: one visit of every agent."""

    visit: int
    wall_s: float
    latencies: tuple[float, ...]  # of the tasks that finished
    done: int  # tasks answered (one attempt each, as on the other side)
    tasks: int
    prompt_evaluated: int  # prompt tokens the side's engine evaluated during the pass
    failed: int = 0  # of `done`: answered, but the pool's monitor failed the answer (one attempt)


def _rate(passes: Sequence[Pass]) -> dict[str, float]:
    wall, done = sum(p.wall_s for p in passes), sum(p.done for p in passes)
    tasks = sum(p.tasks for p in passes)
    return {"tasks_per_s": ratio(done, wall),
            "prompt_tokens_per_task": ratio(sum(p.prompt_evaluated for p in passes), tasks)}


def side_figures(passes: Sequence[Pass]) -> dict[str, Any]:
    """Throughput, latency and prompt tokens per task over all passes, over the returning
    visits only (the second and later) and per visit."""
    return {
        "tasks": sum(p.tasks for p in passes), "done": sum(p.done for p in passes),
        "failed": sum(p.failed for p in passes),
        "wall_s": sum(p.wall_s for p in passes), **_rate(passes),
        "latency_s": stats(x for p in passes for x in p.latencies),
        "returning": _rate([p for p in passes if p.visit > 0]),
        "per_visit": [{"visit": p.visit + 1, **_rate([p]), "latency_p50_s": stats(p.latencies)["p50"]}
                      for p in passes],
    }


def compare(pool: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    """Pool over llama-server: throughput (target >= 3x), latency, prompt tokens evaluated."""
    tput = ratio(pool["tasks_per_s"], server["tasks_per_s"])
    return {
        "ratio_tasks_per_s": tput,
        "ratio_returning_tasks_per_s": ratio(pool["returning"]["tasks_per_s"],
                                             server["returning"]["tasks_per_s"]),
        "ratio_latency_p50": ratio(pool["latency_s"]["p50"], server["latency_s"]["p50"]),
        "ratio_latency_p95": ratio(pool["latency_s"]["p95"], server["latency_s"]["p95"]),
        "ratio_prompt_tokens": ratio(pool["prompt_tokens_per_task"], server["prompt_tokens_per_task"]),
        "target": TARGET_RATIO,
        "target_met": None if math.isnan(tput) else tput >= TARGET_RATIO,
    }


def specs(s: ReturningSizes) -> list[AgentSpec]:
    limit = AgentSpec.model_fields["system_prompt"].metadata[0].max_length
    if len(persona(0, s.persona_tokens, s.seed)) > limit:
        raise UsageError(f"persona of {s.persona_tokens} tokens: over the {limit} characters an "
                         f"agent's persona holds (about {int(limit / CHARS_PER_TOKEN)} tokens)")
    gen = GenerationParams(temperature=0.0, max_tokens=s.answer_tokens, seed=s.seed)
    return [AgentSpec(agent_id=f"ret-{a:05d}", system_prompt=persona(a, s.persona_tokens, s.seed),
                      generation=gen) for a in range(s.agents)]


def tasks_of_visit(s: ReturningSizes, agents: list[AgentSpec], visit: int) -> list[Task]:
    return [Task(task_id=f"ret-v{visit}-{a:05d}", agent_id=agents[a].agent_id,
                 prompt=question(a, visit, agents[a].system_prompt, s.seed), kind=TaskKind.FREE,
                 max_tokens=s.answer_tokens, deadline_s=900.0)
            for v, a in visit_order(s.agents, s.visits) if v == visit]


# -- the run (Ray, llama.cpp) -----------------------------------------------------------------
def returning(s: ReturningSizes, root: Path, say: Say, slots: int | None = None) -> dict[str, Any]:
    """Pool vs llama-server on returning agents; both sides' figures and the ratios."""
    from agents.engines.llama_server import LlamaServerCore
    from pool.bench.common import settings, start_pool

    ctx = context_tokens(s.persona_tokens, s.visits, s.answer_tokens)
    cfg = settings("llama_cpp", recovery={"mode": "none"}, health={"votes": 1},
                   pool={"slots_per_gpu": slots} if slots else {},
                   engine={"n_ctx": ctx, "memory_tokens": ctx, "kv_snapshot": True,
                           "kv_max_bytes": 1 << 30})  # every turn kept, no KV dropped
    k = cfg.pool.slots_per_gpu
    agents, warm = specs(s), _warm_specs(s, k)
    say(f"  returning: {s.agents} agents x {s.visits} visits, personas ~{s.persona_tokens} tokens, "
        f"{k} slots of {ctx} tokens; llama-server's host-RAM prompt cache {s.server_cache_mib} MiB")
    pool = start_pool(cfg, root / "checkpoints")
    server = LlamaServerCore(cfg.engine.model_copy(update={"prompt_cache_mib": s.server_cache_mib}),
                             slots=k)
    peer = _Peer(server, k, {a.agent_id: a for a in agents + warm})
    passes: dict[str, list[Pass]] = {"pool": [], "server": []}
    try:
        pool.register(agents + warm)
        warm_tasks = [Task(task_id=f"ret-warm-{i}", agent_id=w.agent_id, prompt="Which item is "
                           "the heaviest?", max_tokens=s.answer_tokens) for i, w in enumerate(warm)]
        say(f"  returning: {len(warm)} untimed tasks on both sides (engine load, first activations)")
        pool.run(warm_tasks, stall_s=900.0)
        peer.serve(warm_tasks)
        for visit in range(s.visits):
            batch = tasks_of_visit(s, agents, visit)
            sides = ("pool", "server") if visit % 2 == 0 else ("server", "pool")
            for side in sides:
                passes[side].append(_pool_pass(pool, batch, visit) if side == "pool"
                                    else peer.serve_pass(batch, visit))
            p, q = passes["pool"][-1], passes["server"][-1]
            say(f"  visit {visit + 1} / {s.visits}: pool {p.done / p.wall_s:.2f} tasks/s, "
                f"{p.prompt_evaluated / p.tasks:.0f} prompt tokens/task; llama-server "
                f"{q.done / q.wall_s:.2f} tasks/s, {q.prompt_evaluated / q.tasks:.0f} tokens/task")
        activated = [e for e in pool.events if e.get("event") == "pool.activated"]
        kv_dropped = sum(e.get("event") == "agent.kv_dropped" for e in pool.events)
    finally:
        pool.stop()
        server.close()
    out: dict[str, Any] = {"sizes": asdict(s), "slots": k, "ctx_per_slot": ctx,
                           "pool": side_figures(passes["pool"]),
                           "server": side_figures(passes["server"])}
    out["pool"].update(activations=len(activated), kv_restored=sum(bool(e.get("kv_restored"))
                       for e in activated), kv_dropped=kv_dropped,
                       activations_per_task=ratio(len(activated), out["pool"]["tasks"]),
                       activation_ms=stats(1000 * e["latency_s"] for e in activated))
    out["server"].update(cached_share=peer.cached_share(), first_prompt_tokens=peer.first_prompt)
    out.update(compare(out["pool"], out["server"]))
    return out


def _warm_specs(s: ReturningSizes, k: int) -> list[AgentSpec]:
    gen = GenerationParams(temperature=0.0, max_tokens=s.answer_tokens, seed=s.seed)
    return [AgentSpec(agent_id=f"ret-warm-{i:03d}", system_prompt=persona(100_000 + i, 100, s.seed),
                      generation=gen) for i in range(k)]


def _pool_pass(pool: Any, batch: list[Task], visit: int) -> Pass:
    before = _engine_prompt_tokens(pool.settings.pool.namespace)
    wall = pool.run(batch, stall_s=900.0)
    evaluated = _engine_prompt_tokens(pool.settings.pool.namespace) - before
    done = [r for t in batch if (r := pool.results.get(t.task_id)) is not None]
    failed = sum(r.status is not TaskStatus.SUCCEEDED for r in done)
    return Pass(visit, wall, tuple(r.elapsed_s for r in done), len(done), len(batch), int(evaluated),
                failed)


def _engine_prompt_tokens(namespace: str) -> float:
    """llama-server's `prompt_tokens_total` over the pool's engine actors (read inside them)."""
    import ray

    from agents.engines.shared import engine_actors

    read = lambda actor: actor.core.metrics().get("prompt_tokens_total", 0.0)  # noqa: E731
    return float(sum(ray.get([h.__ray_call__.remote(read) for h in engine_actors(namespace)])))


class _Peer:
    """llama-server driven as its docs say: `slots` clients at once, each on its own slot, each
    request the agent's whole context. It keeps each agent's turns (its own answers)."""

    def __init__(self, server: Any, slots: int, by_id: dict[str, AgentSpec]) -> None:
        self.server, self.slots, self.by_id = server, slots, by_id
        self.turns: dict[str, tuple[Turn, ...]] = {}
        self.prompt = self.cached = 0
        self.first_prompt: dict[str, float] = {}  # first visits' prompt tokens: persona + question

    def request(self, task: Task) -> GenRequest:
        spec = self.by_id[task.agent_id]
        return GenRequest(agent_id=task.agent_id, task_id=task.task_id,
                          system_prompt=spec.system_prompt, prompt=task.prompt,
                          params=spec.generation, memory=self.turns.get(task.agent_id, ()))

    def serve(self, tasks: list[Task]) -> tuple[float, list[tuple[float, GenResult | None]]]:
        """The wall time, and each task's (latency, answer; None when its request failed)."""
        wall, out = on_free_slots(self.slots, [[t] for t in tasks], self._generate)
        for task, (_, res) in zip(tasks, out, strict=True):
            if res is not None:
                self.turns[task.agent_id] = (*self.turns.get(task.agent_id, ()),
                                             Turn(role="user", content=task.prompt),
                                             Turn(role="assistant", content=res.text))
        return wall, out

    def _generate(self, task: Task, slot: int) -> GenResult | None:
        try:
            res: GenResult = self.server.generate(self.request(task), slot)
        except Exception:  # counted as not done, as a failed task of the pool's
            return None
        return res

    def serve_pass(self, batch: list[Task], visit: int) -> Pass:
        before = self.server.metrics().get("prompt_tokens_total", 0.0)
        wall, out = self.serve(batch)
        evaluated = self.server.metrics().get("prompt_tokens_total", 0.0) - before
        ok = [(lat, r) for lat, r in out if r is not None]
        self.prompt += sum(r.prompt_tokens for _, r in ok)
        self.cached += sum(r.cached_tokens for _, r in ok)
        if visit == 0:
            self.first_prompt = stats(r.prompt_tokens for _, r in ok)
        return Pass(visit, wall, tuple(lat for lat, _ in ok), len(ok), len(batch), int(evaluated))

    def cached_share(self) -> float:
        """Of the prompt tokens llama-server was sent, the share it took from a cache."""
        return ratio(self.cached, self.prompt)


def report_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, bool | None]]:
    """This benchmark's rows of `selfheal bench`'s table (`pool.bench.report`)."""
    r = res.get("returning")
    if not r:
        return []
    p, q, z = r["pool"], r["server"], r["sizes"]
    name = "returning agents"

    def f(v: Any, fmt: str = "{:.2f}") -> str:
        return "n/a" if v is None else fmt.format(v)

    return [
        (name, f"tasks/s pool / llama-server ({z['agents']} agents x {z['visits']} visits, "
               f"~{z['persona_tokens']}-token personas, {r['slots']} slots)",
         f"{f(p['tasks_per_s'])} / {f(q['tasks_per_s'])} = {f(r['ratio_tasks_per_s'])}x",
         f">= {TARGET_RATIO:g}x", r["target_met"]),
        (name, "returning visits only: tasks/s ratio", f"{f(r['ratio_returning_tasks_per_s'])}x", "",
         None),
        (name, "task latency p50 / p95, pool vs llama-server",
         f"{f(p['latency_s']['p50'])} / {f(p['latency_s']['p95'])} s vs "
         f"{f(q['latency_s']['p50'])} / {f(q['latency_s']['p95'])} s", "", None),
        (name, "prompt tokens evaluated per task, pool / llama-server",
         f"{f(p['prompt_tokens_per_task'], '{:.0f}')} / {f(q['prompt_tokens_per_task'], '{:.0f}')}"
         f" = {f(r['ratio_prompt_tokens'])}x", "", None),
        (name, "pool: activations (per task) / with KV restored / KV dropped / failed by monitor",
         f"{p['activations']} ({f(p['activations_per_task'])}) / {p['kv_restored']} / "
         f"{p['kv_dropped']} / {p['failed']}", "", None),
    ]

