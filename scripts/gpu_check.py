"""VRAM check on a CUDA machine, without Ray: load a model, read pynvml, sleep and wake, print figures.

With vLLM installed: start `vllm.LLM` on the model folder (default: the converted SmolLM2, see
`scripts/convert_gguf_to_hf.py`) with sleep mode and prefix caching, read the device's used
memory (pynvml) before loading, after loading, after a short generation, asleep (level 1) and
awake again. Without vLLM: the same readings for a plain torch model moved to the CPU and back.
Without CUDA (or without pynvml / a driver) it says so and exits 0: there is nothing to measure.

    python scripts/gpu_check.py [--model DIR] [--budget-mib 8192] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def nvml_used_mib() -> float:
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    return float(pynvml.nvmlDeviceGetMemoryInfo(handle).used) / MIB


def no_gpu_reason() -> str | None:
    """Why this machine cannot be measured, or None."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # ImportError or an NVML error: both mean no reading
        return f"pynvml unavailable: {exc}"
    return None


def check_vllm(model: Path, budget_mib: int) -> dict[str, Any]:
    import torch
    from vllm import LLM, SamplingParams

    total_mib = torch.cuda.mem_get_info()[1] / MIB
    util = round(min(0.9, max(0.05, budget_mib / total_mib)), 4)
    fig: dict[str, Any] = {"engine": "vllm", "device_total_mib": round(total_mib), "utilization": util,
                           "before_mib": nvml_used_mib()}
    started = time.perf_counter()
    llm = LLM(model=str(model), gpu_memory_utilization=util, enable_sleep_mode=True,
              enable_prefix_caching=True, max_model_len=2048)
    fig["load_s"] = time.perf_counter() - started
    fig["loaded_mib"] = nvml_used_mib()
    out = llm.generate(["The capital of France is"], SamplingParams(max_tokens=16, temperature=0))
    fig["answer"] = out[0].outputs[0].text
    fig["generated_mib"] = nvml_used_mib()
    started = time.perf_counter()
    llm.sleep(level=1)
    fig["sleep_s"] = time.perf_counter() - started
    fig["asleep_mib"] = nvml_used_mib()
    started = time.perf_counter()
    llm.wake_up()
    fig["wake_s"] = time.perf_counter() - started
    fig["awake_mib"] = nvml_used_mib()
    out = llm.generate(["The capital of France is"], SamplingParams(max_tokens=16, temperature=0))
    fig["answer_after_wake"] = out[0].outputs[0].text
    return fig


def check_torch(model: Path | None) -> dict[str, Any]:
    """No vLLM: a torch model (the HF folder if given, else a 256 MiB stand-in) to CPU and back."""
    import torch

    fig: dict[str, Any] = {"engine": "torch", "before_mib": nvml_used_mib()}
    if model is not None and (model / "config.json").exists():
        from transformers import AutoModelForCausalLM

        net: Any = AutoModelForCausalLM.from_pretrained(str(model))
    else:
        net = torch.nn.Linear(8192, 8192)  # 256 MiB of float32 weights
    started = time.perf_counter()
    net.to("cuda")
    torch.cuda.synchronize()
    fig["load_s"] = time.perf_counter() - started
    fig["loaded_mib"] = nvml_used_mib()
    started = time.perf_counter()
    net.to("cpu")
    torch.cuda.empty_cache()
    fig["sleep_s"] = time.perf_counter() - started
    fig["asleep_mib"] = nvml_used_mib()
    started = time.perf_counter()
    net.to("cuda")
    torch.cuda.synchronize()
    fig["wake_s"] = time.perf_counter() - started
    fig["awake_mib"] = nvml_used_mib()
    return fig


def default_model() -> Path | None:
    try:
        from agents.engines.hf_model import default_hf_dir
    except ImportError:  # run outside the project's environment
        return None
    return default_hf_dir()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="VRAM check: load, sleep, wake (CUDA + pynvml).")
    ap.add_argument("--model", type=Path, help="HF model folder (default: the converted SmolLM2)")
    ap.add_argument("--budget-mib", type=int, default=8192, help="VRAM budget (sets the vLLM share)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = ap.parse_args(argv)
    reason = no_gpu_reason()
    if reason is not None:
        print(f"gpu_check: skipped, {reason}; nothing to measure on this machine")
        return 0
    model = args.model or default_model()
    try:
        import vllm  # noqa: F401

        has_vllm = model is not None and (model / "config.json").exists()
    except ImportError:
        has_vllm = False
    fig = check_vllm(model, args.budget_mib) if has_vllm and model else check_torch(model)
    fig["freed_by_sleep_mib"] = fig["loaded_mib"] - fig["asleep_mib"]
    fig["restored_by_wake_mib"] = fig["awake_mib"] - fig["asleep_mib"]
    if args.json:
        print(json.dumps(fig))
    else:
        for key, value in fig.items():
            print(f"{key:>22}: {round(value, 2) if isinstance(value, float) else value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
