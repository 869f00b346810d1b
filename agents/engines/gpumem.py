"""GPU memory readings (pynvml), for the VRAM ledger's reconciliation. No Ray, no vLLM.

A reading is a dict: `available` (False with a `reason` where there is no GPU, no driver or no
pynvml), `used_mib` (what the pool's processes hold on the device: the reading process and its
children), `device_used_mib` and `device_total_mib` (the whole card), `source`, `id` (which
reading this is: Hosts that share one engine return the same id, and the pool counts it once) and
`scope`: "gpu" when the reading covers everything the pool holds on the GPU (a shared engine's
processes), "process" when it covers one Host (the pool sums every Host's).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

MIB = 1024 * 1024


def process_memory(pid: int | None = None) -> dict[str, float]:
    """RSS and PSS (shared pages split among the processes sharing them) of process `pid`
    (default: this one) in MiB, from /proc."""
    out = {"rss_mib": 0.0, "pss_mib": 0.0}
    with open(f"/proc/{pid or os.getpid()}/smaps_rollup") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[f"{key.lower()}_mib"] = int(rest.split()[0]) / 1024
    return out


def visible_gpu() -> int:
    """The first GPU this process may use (Ray sets CUDA_VISIBLE_DEVICES for its actors)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def nvml_reading(pid: int | None = None) -> dict[str, Any]:
    """pynvml's reading of the visible GPU and of process `pid` (default: this one) with its
    children (vLLM's engine core and workers run in child processes)."""
    try:
        import pynvml
    except ImportError:
        return {"available": False, "reason": "pynvml is not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"no NVIDIA driver: {exc}"}
    pid = pid or os.getpid()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(visible_gpu())
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        ours = {pid} | _children(pid)
        mine = sum(p.usedGpuMemory or 0 for p in procs if p.pid in ours)
        return {"available": True, "source": "pynvml", "id": f"pid-{pid}", "scope": "process",
                "used_mib": mine / MIB,
                "device_used_mib": mem.used / MIB, "device_total_mib": mem.total / MIB}
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"pynvml: {exc}"}
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _children(pid: int) -> set[int]:
    try:
        import psutil

        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except Exception:  # psutil missing or the process is gone: count our own pid only
        return set()


def total_used(readings: list[dict[str, Any]]) -> float | None:
    """What the pool holds on one GPU from its Hosts' readings: each reading id counted once (at
    its highest: Hosts read a shared engine a moment apart); None when any reading is unavailable
    (a partial sum would understate it)."""
    if not readings or not all(r.get("available") for r in readings):
        return None
    by_id: dict[str, float] = {}
    for r in readings:
        by_id[r["id"]] = max(by_id.get(r["id"], 0.0), float(r["used_mib"]))
    return sum(by_id.values())
