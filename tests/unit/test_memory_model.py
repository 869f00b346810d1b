"""The llama.cpp memory model: KV bytes per token from the shape, how many agents fit, the ledger."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agents.engines.gpumem import MIB
from agents.engines.memory import LLAMA_3_2_1B, LLAMA_3_2_3B, ModelShape, plan_memory
from agents.errors import UsageError
from pool.control.budget import VramLedger

SMOL = ModelShape("smol", layers=30, kv_heads=3, head_dim=64, weights_bytes=96_573_440,
                  ctx_train=8192)


def test_kv_bytes_per_token_is_layers_heads_dim_k_and_v_element_size() -> None:
    assert SMOL.kv_bytes_per_token() == 30 * 3 * 64 * 2 * 2 == 23040
    assert SMOL.kv_bytes_per_token("q8_0") == int(30 * 3 * 64 * 2 * 34 / 32)
    assert LLAMA_3_2_1B.kv_bytes_per_token() == 32768 and LLAMA_3_2_3B.kv_bytes_per_token() == 114688


def test_residents_follow_from_the_budget_and_the_cap() -> None:
    p = plan_memory(SMOL, 8192, 0.85, 2048, cap=12, compute_mib=64)
    assert p.slot_mib == 45.0 and p.fit == int((8192 * 0.85 - p.base_mib) // 45.0)
    assert p.residents == 12  # the cap binds
    big = plan_memory(LLAMA_3_2_3B, 8192, 0.85, 4096, cap=12, compute_mib=64)
    assert big.fit == 11 and big.residents == 11  # the budget binds
    assert any("= 11 agents per GPU" in line for line in big.lines())


def test_a_context_that_does_not_fit_is_a_usage_error_naming_the_numbers() -> None:
    with pytest.raises(UsageError, match="context 8192 does not fit the budget"):
        plan_memory(SMOL, 256, 0.85, 8192, cap=12, compute_mib=64)


def test_the_ledger_counts_a_residents_slot_tokens_rounded_up() -> None:
    ledger = VramLedger(8192, 0.85, 111, 1, 12, agent_mib=45, kv_bytes_per_token=23040)
    assert ledger.footprint(0) == 0 and ledger.footprint(1) == 1
    assert ledger.footprint(1000) == -(-1000 * 23040 // MIB) == 22
    assert VramLedger(8192, 0.85, 600, 1, 12, agent_mib=320).footprint(1000) == 320  # not by tokens


def test_selfheal_plan_prints_the_arithmetic_and_refuses_bad_input(tmp_path: Path) -> None:
    exe = [str(Path(sys.executable).parent / "selfheal")]
    ok = subprocess.run([*exe, "plan", "--shape", "llama-3.2-1b"], capture_output=True, text=True)
    assert ok.returncode == 0 and "32,768 B" in ok.stdout and "12 agents per GPU" in ok.stdout
    bad = tmp_path / "x.gguf"
    bad.write_text("hello")
    got = subprocess.run([*exe, "plan", "--model", str(bad)], capture_output=True, text=True)
    assert got.returncode == 2 and got.stderr.strip().splitlines() == [
        f"error: model {bad}: not a GGUF file (bad magic b'hell')"]
    tight = subprocess.run([*exe, "plan", "--shape", "llama-3.2-3b", "--budget-mib", "2048"],
                           capture_output=True, text=True)
    assert tight.returncode == 2 and "does not fit the budget" in tight.stderr
