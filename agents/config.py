"""One pydantic config tree, loaded from YAML or TOML plus CLI overrides.

Every field has a description and a bound; unknown keys are errors. Every float is finite, and
times and sizes have maxima, so a value that validates cannot break the run's arithmetic later
(an infinite watchdog, a 1e308 backoff that overflows `sleep`, an integer too large for a float).
`load_settings` turns any problem into a one-line `UsageError` that names the field.
"""

from __future__ import annotations

import math
import tomllib
from enum import StrEnum
from pathlib import Path, PurePath
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agents.errors import UsageError

DAY_S = 86_400.0  # the longest time any setting may name
MAX_MIB = 1 << 24  # 16 TiB: the largest memory size any setting may name
MAX_SEED = (1 << 32) - 1  # engines seed 32-bit generators
# The schemes a store location may name (`pool.store.location.resolve` reads them through
# `store_uri` and `mangled` below: one check for the config and the store).
STORE_SCHEMES: Final = frozenset({"file", "s3", "gs", "gcs", "mock"})
_MANGLED: Final = frozenset(f"{scheme}:" for scheme in STORE_SCHEMES)


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class HealthWeights(Section):
    """Weights of the five health components; they must sum to 1."""

    coherence: float = Field(0.25, ge=0, le=1, description="Output is not degenerate.")
    completeness: float = Field(0.20, ge=0, le=1, description="Output meets the task contract.")
    latency: float = Field(0.15, ge=0, le=1, description="Elapsed time against the deadline.")
    memory: float = Field(0.25, ge=0, le=1, description="VRAM (or RAM) headroom after the step.")
    consistency: float = Field(0.15, ge=0, le=1, description="Agreement with peers / own past.")

    @model_validator(mode="after")
    def _sum_to_one(self) -> HealthWeights:
        total = sum(self.as_dict().values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"health weights must sum to 1, got {total:.4f}")
        return self

    def as_dict(self) -> dict[str, float]:
        return dict(self.model_dump())


class VoteWhen(StrEnum):
    NEVER = "never"
    ANSWERS = "answers"  # short answers (kind=answer): their only signal is agreement
    CONTRACTED = "contracted"  # answers, labels and JSON (free text never agrees word for word)


class HealthConfig(Section):
    weights: HealthWeights = Field(default_factory=HealthWeights, description="Component weights.")
    healthy: float = Field(0.75, ge=0, le=1, description="Score at or above which a step is healthy.")
    contract_floor: float = Field(
        0.5, ge=0, le=1, description="Completeness below this is a failed contract, whatever the score."
    )
    coherence_floor: float = Field(
        0.5, ge=0, le=1, description="Coherence below this is garbage, whatever the score."
    )
    votes: int = Field(
        3, ge=1, le=9, description="Self-consistency: samples per step (the first plus extra "
        "ones with other seeds) when `vote_when` applies; the majority answer is returned.",
    )
    vote_when: VoteWhen = Field(VoteWhen.ANSWERS, description="Which tasks vote.")
    consistency_floor: float = Field(
        0.5, ge=0, le=1, description="Agreement of the votes with the chosen answer below this "
        "is a contract fault (tier 1 retunes: greedy, constrained).",
    )


class RecoveryMode(StrEnum):
    NONE = "none"  # accept the first answer
    NAIVE = "naive"  # retry with the same parameters, up to max_attempts
    TIERED = "tiered"  # the tiered, supervised self-healing policy


class RecoveryConfig(Section):
    mode: RecoveryMode = Field(RecoveryMode.TIERED, description="Which recovery policy runs.")
    max_attempts: int = Field(4, ge=1, le=20, description="Hard cap on attempts per task.")
    deadline_factor: float = Field(
        3.0, ge=1, le=100, description="A generation still running at the task's deadline_s x "
        "this is cut and counts as a TIMEOUT fault.",
    )
    greedy_constrained_first: bool = Field(
        False, description="First attempts decode at temperature 0, constrained by the task's "
        "schema or labels (what a careful user of llama-server does in one attempt).",
    )
    intensity: int = Field(
        5, ge=1, description="Restarts allowed within `period_s` before escalating a tier."
    )
    period_s: float = Field(60.0, gt=0, le=DAY_S, description="Supervision window in seconds.")
    backoff_base_s: float = Field(0.02, ge=0, le=DAY_S, description="First backoff delay.")
    backoff_max_s: float = Field(2.0, ge=0, le=DAY_S, description="Longest backoff delay.")
    jitter: float = Field(0.5, ge=0, le=1, description="Relative jitter of the backoff.")
    seed: int = Field(0, ge=0, description="Seed of the jitter (any integer: it seeds Python's `random`).")


class EngineKind(StrEnum):
    SCRIPTED = "scripted"
    LLAMA_CPP = "llama_cpp"
    VLLM = "vllm"


class FaultRates(Section):
    """Fault mix injected by the scripted engine (fractions of tasks)."""

    garbage: float = Field(0.08, ge=0, le=1, description="Degenerate output.")
    truncation: float = Field(0.05, ge=0, le=1, description="Answer cut off by the token limit.")
    timeout: float = Field(0.04, ge=0, le=1, description="Step past its deadline.")
    oom: float = Field(0.03, ge=0, le=1, description="Out of memory.")
    crash: float = Field(0.02, ge=0, le=1, description="Engine crash.")
    permanent: float = Field(0.01, ge=0, le=1, description="Never succeeds.")

    @model_validator(mode="after")
    def _at_most_one(self) -> FaultRates:
        if sum(self.model_dump().values()) > 1.0:
            raise ValueError("fault rates must sum to at most 1")
        return self


class DeviceSim(Section):
    """What the scripted engine pretends its device does, so the pool's VRAM paths run anywhere."""

    can_sleep: bool = Field(False, description="The engine can sleep (like vLLM on CUDA).")
    used_mib: dict[int, int] = Field(
        default_factory=dict,
        description="What a pynvml reading of GPU i would say the pool's processes use; "
        "empty: no reading, as on a machine without a GPU.",
    )
    used_from_s: float = Field(
        0.0, ge=0, le=DAY_S, description="Seconds after the engine starts before `used_mib` is read "
        "(0 until then): memory pressure that arrives while agents are resident.",
    )
    used_from_steps: int = Field(
        0, ge=0, description="Steps the engine answers before `used_mib` is read (0 until "
        "then), as well as `used_from_s`: pressure that arrives while agents are at work "
        "however slow the machine is.",
    )
    used_for_s: float = Field(
        0.0, ge=0, le=DAY_S, description="Seconds the reading lasts once it arrived (then 0 again: "
        "another tenant left); 0: for ever.",
    )


class EngineConfig(Section):
    kind: EngineKind = Field(EngineKind.LLAMA_CPP, description="Model runtime.")
    model_path: Path | None = Field(
        None, description="GGUF file (llama_cpp) or HF folder (vllm); default: the shipped model."
    )
    n_ctx: int = Field(
        2048, ge=256, le=32768, description="Context window of one agent in tokens (llama.cpp: "
        "of each slot; the engine holds one slot per resident agent).",
    )
    n_threads: int = Field(
        0, ge=0, le=256, description="Threads of the shared llama.cpp engine; 0 = every core."
    )
    n_gpu_layers: int | None = Field(
        None, ge=0, le=100000, description="llama.cpp: layers on the GPU; default: all of them "
        "when the engine sees a GPU, 0 otherwise.",
    )
    prompt_cache_mib: int = Field(
        1024, ge=0, le=MAX_MIB, description="llama.cpp: host-RAM prompt cache across slots (llama-server's "
        "--cache-ram): a prefix that agents share (a persona, a task's template) is evaluated once, "
        "not once per slot; 0: off (each agent's own KV lives in its slot and checkpoint either way).",
    )
    compute_mib: float = Field(
        64.0, ge=0, le=MAX_MIB, description="llama.cpp: reserve for the engine's compute buffers until the "
        "engine reports its own (the plan before it starts, `selfheal plan`).",
    )
    memory_tokens: int = Field(
        512, ge=0, description="Token budget of the agent memory put into the prompt."
    )
    kv_snapshot: bool = Field(True, description="Keep the engine KV state in the checkpoint.")
    kv_keep_mib: int = Field(
        1024, ge=0, le=MAX_MIB, description="llama.cpp: the engine keeps the KV snapshots it saved "
        "at parks (newest first, in its private folder: disk and page cache) up to this size, so "
        "that activating such an agent again restores its slot without moving the snapshot (the "
        "checkpoint always has it too); 0: off.",
    )
    kv_max_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="Largest KV snapshot kept in a checkpoint; a larger "
        "one is dropped (event `agent.kv_dropped`, counted in the summary).",
    )
    faults: FaultRates = Field(default_factory=FaultRates, description="Scripted engine faults.")
    step_cost_s: float = Field(0.0, ge=0, le=DAY_S, description="Scripted engine: seconds per step.")
    device: DeviceSim = Field(default_factory=DeviceSim, description="Scripted engine: device.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Engine seed.")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vLLM: share of memory to reserve; default from the budget."
    )


def mangled(path: PurePath) -> bool:
    """A URI made into a path: `Path("s3://b/x")` is `s3:/b/x`, a local folder named `s3:`."""
    return any(part.lower() in _MANGLED for part in path.parts)


def store_uri(text: str) -> SplitResult:
    """The parts of a store URI (`scheme://...`); a ValueError for a scheme the store cannot
    use, a file:// URI naming another machine, or an s3:// or gs:// URI with no bucket."""
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in STORE_SCHEMES:
        raise ValueError(f"{text}: storage scheme {scheme!r} is not supported "
                         "(a path, file://, s3:// or gs://)")
    if scheme == "file" and parts.netloc not in ("", "localhost"):
        raise ValueError(f"{text}: a file:// URI names this machine's disk, not {parts.netloc}")
    if scheme in ("s3", "gs", "gcs") and not parts.netloc:
        raise ValueError(f"{text}: no bucket")
    return parts


def store_location(value: str | PurePath) -> str:
    """A store path or URI as a string, checked as `pool.store.location.resolve` checks it: a
    scheme the store cannot use, a URI with no bucket, or a URI made into a path is refused here,
    at load."""
    text = str(value).strip()
    if not text:
        raise ValueError("the store location is empty")
    if "://" not in text:
        if mangled(PurePath(text)):
            raise ValueError(f"{text}: a URI made into a Path; pass the URI string")
        return str(value)
    store_uri(text)
    return str(value)


class PoolConfig(Section):
    budget_mib: int = Field(8192, ge=64, le=MAX_MIB, description="VRAM budget of one GPU in MiB.")
    watermark: float = Field(0.85, gt=0, le=1, description="Share of the budget the ledger may use.")
    slots_per_gpu: int = Field(
        12, ge=1, le=256, description="Cap on residents (Hosts) per GPU; with llama.cpp the "
        "budget may allow fewer (see `selfheal plan`).",
    )
    num_gpus: int = Field(1, ge=1, le=64, description="GPUs (logical without hardware).")
    engine_base_mib: int = Field(
        600, ge=0, le=MAX_MIB, description="Engine footprint per GPU until the engine reports its own "
        "(scripted, vLLM; llama.cpp counts from the model's metadata).",
    )
    agent_kv_mib: int = Field(
        320, ge=0, le=MAX_MIB, description="Footprint of one resident agent (scripted, vLLM; llama.cpp "
        "counts the tokens in the agent's KV slot).",
    )
    checkpoint_dir: str = Field(
        "checkpoints", description="The store (checkpoints, agent table, dead letters): a path "
        "(relative: under the run's --out), a file:// URI, or an s3:// or gs:// URI that every "
        "node of the cluster reads.",
    )
    keep_versions: int = Field(3, ge=1, le=100, description="Checkpoint versions kept per agent.")
    batch_per_agent: int = Field(
        1, ge=1, le=1024, description="Tasks dispatched to a resident agent in one call. An "
        "agent has one KV slot, so its tasks run one after another: with more than 1, a task "
        "waits for the attempts of the others in its call (fewer Ray calls and commits).",
    )
    watchdog_s: float = Field(
        600.0, gt=0, le=DAY_S, description="A Host's batch running longer is a stall: its agent is fenced "
        "off by a new epoch and re-activated on another Host.",
    )
    monitor_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="Longest wait of a Host for the monitor's verdicts on "
        "a round; past it the Host scores and decides alone for the rest of its batch (event "
        "`host.monitor_unavailable`).",
    )
    task_deaths: int = Field(
        2, ge=1, le=100, description="Host deaths a task may cause: a task running on this "
        "many Hosts that died is failed alone, and its agent goes on (in a batch of several, "
        "the task its Host said it started; every task of the batch when it said nothing).",
    )
    reconcile_s: float = Field(
        30.0, ge=0, le=DAY_S, description="Seconds between reconciliations of the VRAM ledger with "
        "pynvml's reading of each GPU; 0 turns them off.",
    )
    namespace: str = Field(
        "selfheal", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Prefix of the Ray namespaces "
        "of the pools: each run's pool (manager, monitor, Hosts, engines) lives in "
        "`<namespace>-<run id>`, so runs sharing a cluster never touch each other's actors.",
    )
    orphan_timeout_s: float = Field(
        300.0, gt=0, le=86_400, description="A pool that no driver has drained for this long "
        "(its driver was killed) shuts itself down and gives the cluster its GPU shares back.",
    )

    @field_validator("checkpoint_dir", mode="before")
    @classmethod
    def _store_location(cls, value: Any) -> Any:
        return store_location(value) if isinstance(value, str | PurePath) else value


class Settings(Section):
    pool: PoolConfig = Field(default_factory=PoolConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)

    @model_validator(mode="after")
    def _base_fits(self) -> Settings:
        """Configured footprints (scripted, vLLM) must leave room for one agent; llama.cpp's come
        from the model and are checked against the budget when a run starts (`selfheal plan`)."""
        p = self.pool
        limit = p.budget_mib * p.watermark
        if self.engine.kind is not EngineKind.LLAMA_CPP and p.engine_base_mib + p.agent_kv_mib > limit:
            raise ValueError(
                f"pool.engine_base_mib + pool.agent_kv_mib ({p.engine_base_mib + p.agent_kv_mib}) "
                f"exceeds budget_mib x watermark ({limit:.0f}): no agent could ever be resident"
            )
        return self


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"config {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise UsageError(f"config {path}: not valid {path.suffix.lstrip('.')}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config {path}: top level must be a mapping")
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def one_line(exc: ValidationError, where: str) -> str:
    """The first validation error as `where: field.path: message`."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {loc}: {msg}"


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from an optional YAML/TOML file, then nested `overrides` (from CLI flags)."""
    data = _read_file(path) if path else {}
    data = _merge(data, overrides or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise UsageError(one_line(exc, f"config {path}" if path else "config")) from None
