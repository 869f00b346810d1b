"""The memory model of a llama.cpp engine, from the model's own GGUF metadata. Pure arithmetic.

One engine per GPU holds the weights once plus its compute buffers (the engine base), and a KV
cache of `ctx` tokens for each of its slots, one slot per resident agent. A token of KV costs
`layers x KV heads x head dim x 2 (K and V) x element size` bytes, read from the GGUF header
(`<arch>.block_count`, `<arch>.attention.head_count_kv`, `<arch>.attention.key_length` or
embedding length / heads). llama.cpp reserves every slot's KV when the engine starts, so the
number of residents that fit a budget is `(budget x watermark - base) // (ctx x bytes/token)`,
capped by `slots_per_gpu`; the ledger then counts what each resident's slot really holds.

The compute buffers are only known once llama.cpp has built its graph: until the engine reports
them, `compute_mib` stands in (an explicit, configurable reserve, never a hidden constant).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agents.engines.gpumem import MIB
from agents.errors import UsageError

KV_ELEMENT_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the memory model needs to know of a model."""

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    weights_bytes: int  # sum of the tensors' bytes (what llama.cpp loads)
    ctx_train: int  # context length the model was trained for

    def kv_bytes_per_token(self, cache_type: str = "f16") -> int:
        size = KV_ELEMENT_BYTES[cache_type]
        return int(self.layers * self.kv_heads * self.head_dim * 2 * size)


# Llama-shaped 4-bit (Q4_K_M) models, from their published GGUF headers: what a user would try on
# an 8 GB card next. Only the shapes are needed to count how many agents fit; no weights.
LLAMA_3_2_1B = ModelShape("Llama-3.2-1B-Instruct Q4_K_M", 16, 8, 64, 807_694_464, 131072)
LLAMA_3_2_3B = ModelShape("Llama-3.2-3B-Instruct Q4_K_M", 28, 8, 128, 2_019_377_696, 131072)


def read_shape(path: Path) -> ModelShape:
    """The shape of the GGUF model at `path`; a one-line UsageError when it is not one."""
    from gguf import GGUFReader  # numpy-heavy: imported only when a model is read

    try:
        reader = GGUFReader(str(path), "r")
    except (OSError, ValueError) as exc:
        raise UsageError(f"model {path}: not a readable GGUF file: {exc}") from None

    def field(key: str, default: int | str | None = None) -> int | str:
        f = reader.fields.get(key)
        if f is None:
            if default is None:
                raise UsageError(f"model {path}: GGUF metadata has no {key}")
            return default
        value = f.contents()
        return value if isinstance(value, str) else int(value)

    arch = str(field("general.architecture"))
    heads = int(field(f"{arch}.attention.head_count"))
    embd = int(field(f"{arch}.embedding_length"))
    return ModelShape(
        name=str(field("general.name", path.name)),
        layers=int(field(f"{arch}.block_count")),
        kv_heads=int(field(f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(field(f"{arch}.attention.key_length", embd // heads)),
        weights_bytes=sum(int(t.n_bytes) for t in reader.tensors),
        ctx_train=int(field(f"{arch}.context_length", 0)),
    )


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """How many agents one GPU holds, and why."""

    shape: ModelShape
    budget_mib: int
    watermark: float
    ctx: int  # tokens per slot (per resident agent)
    cache_type: str
    weights_mib: float
    compute_mib: float
    kv_bytes_per_token: int
    cap: int  # slots_per_gpu

    @property
    def limit_mib(self) -> float:
        return self.budget_mib * self.watermark

    @property
    def base_mib(self) -> float:
        return self.weights_mib + self.compute_mib

    @property
    def slot_mib(self) -> float:
        """KV of one full slot."""
        return self.ctx * self.kv_bytes_per_token / MIB

    @property
    def fit(self) -> int:
        """Slots the budget holds, before the cap."""
        return max(0, int((self.limit_mib - self.base_mib) // self.slot_mib))

    @property
    def residents(self) -> int:
        return min(self.fit, self.cap)

    def lines(self) -> list[str]:
        """The arithmetic, for `selfheal plan`."""
        s = self.shape
        return [
            f"model        {s.name}: {s.layers} layers x {s.kv_heads} KV heads x {s.head_dim} head dim",
            f"KV per token {s.layers} x {s.kv_heads} x {s.head_dim} x 2 (K,V) x "
            f"{KV_ELEMENT_BYTES[self.cache_type]:g} B ({self.cache_type}) = {self.kv_bytes_per_token:,} B",
            f"KV per agent {self.ctx:,} tokens x {self.kv_bytes_per_token:,} B = {self.slot_mib:,.1f} MiB",
            f"limit        {self.budget_mib:,} MiB x {self.watermark:g} = {self.limit_mib:,.0f} MiB",
            f"engine base  weights {self.weights_mib:,.1f} + compute {self.compute_mib:,.1f} = "
            f"{self.base_mib:,.1f} MiB (once per GPU)",
            f"fit          ({self.limit_mib:,.0f} - {self.base_mib:,.1f}) // {self.slot_mib:,.1f} = "
            f"{self.fit:,} agents",
            f"resident     min(fit {self.fit:,}, slots_per_gpu {self.cap}) = {self.residents} agents per GPU",
        ]


def plan_memory(
    shape: ModelShape, budget_mib: int, watermark: float, ctx: int, cap: int,
    compute_mib: float, cache_type: str = "f16",
) -> MemoryPlan:
    """The plan; a UsageError naming the numbers when not one agent fits."""
    if cache_type not in KV_ELEMENT_BYTES:
        raise UsageError(f"KV cache type {cache_type!r}: one of {', '.join(KV_ELEMENT_BYTES)}")
    p = MemoryPlan(shape, budget_mib, watermark, ctx, cache_type, shape.weights_bytes / MIB,
                   compute_mib, shape.kv_bytes_per_token(cache_type), cap)
    if p.fit < 1:
        raise UsageError(
            f"context {ctx} does not fit the budget: engine base {p.base_mib:,.0f} MiB + one agent's "
            f"KV {p.slot_mib:,.0f} MiB > limit {p.limit_mib:,.0f} MiB (budget {budget_mib} x {watermark:g})")
    return p
