"""llama-server cuts a generation at the request's time limit (t_max_predict_ms), and the engine
calls that a TIMEOUT fault; a generation within its limit is untouched. No Ray."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agents.config import EngineConfig
from agents.engines.base import GenRequest
from agents.engines.llama_server import LlamaServerCore
from agents.errors import EngineFault, FaultClass
from agents.models import GenerationParams

pytestmark = pytest.mark.llama

POEM = "Write a long poem about the sea, one short line after another."


@pytest.fixture(scope="module")
def core() -> Iterator[LlamaServerCore]:
    eng = LlamaServerCore(EngineConfig(n_ctx=512, prompt_cache_mib=0), slots=1, n_threads=2)
    yield eng
    eng.close()


def _req(timeout_s: float | None, max_tokens: int = 200) -> GenRequest:
    params = GenerationParams(temperature=0.0, max_tokens=max_tokens, seed=1)  # a poem: lines
    return GenRequest("agent-a", "t-1", "You are a poet.", POEM, params, timeout_s=timeout_s)


def test_a_generation_past_its_time_limit_is_cut_as_a_timeout(core: LlamaServerCore) -> None:
    with pytest.raises(EngineFault, match="time limit") as cut:
        core.generate(_req(timeout_s=0.001), slot=0)  # cut at the first newline
    assert cut.value.fault is FaultClass.TIMEOUT
    assert core.tokens[0] > 0  # the slot still counts what it holds
    whole = core.generate(_req(timeout_s=600.0, max_tokens=32), slot=0)
    assert whole.completion_tokens == 32 and whole.finish_reason == "length"  # its token limit
