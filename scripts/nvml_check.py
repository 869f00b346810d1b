"""GPU check of the VRAM readings the pool reconciles with: does `agents.engines.gpumem.nvml_reading`
see what this process and its child hold on the device (vLLM's engine core runs in a child)?

`python scripts/nvml_check.py` on a machine with an NVIDIA GPU and PyTorch with CUDA: it takes
2 GiB in this process and 1 GiB in a child and prints pynvml's readings before and after, as JSON.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pynvml  # noqa: E402
import torch  # noqa: E402

from agents.engines.gpumem import nvml_reading  # noqa: E402

out = {"pid": os.getpid(), "before": nvml_reading()}
x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
out["after_2GiB"] = nvml_reading()
CHILD = ("import torch, time\ny = torch.empty(1024**3, dtype=torch.uint8, device='cuda')\n"
         "torch.cuda.synchronize()\nprint('ok', flush=True)\ntime.sleep(60)")
child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
out["child_pid"] = child.pid
out["with_child_1GiB"] = nvml_reading()
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
out["nvml_procs"] = [(p.pid, (p.usedGpuMemory or 0) // 2**20) for p in procs]
out["torch_reserved_mib"] = torch.cuda.memory_reserved() // 2**20
child.kill()
print(json.dumps(out, indent=1))
