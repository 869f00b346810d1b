"""The pure core and the Host loop never import Ray (STYLE.md: Ray stays at the edge)."""

import subprocess
import sys

PURE = ["agents.state", "agents.models", "agents.config", "agents.codec", "recovery.health",
        "recovery.policy", "recovery.monitor", "pool.control.budget", "pool.control.registry",
        "pool.control.scheduler", "pool.control.book", "pool.control.actions", "pool.runtime.host",
        "pool.store.checkpoint", "pool.driver.summary", "agents.engines.scripted"]


def test_pure_modules_do_not_import_ray() -> None:
    # A fresh interpreter: other test modules in the same session import ray.
    code = f"import sys, importlib\nfor m in {PURE!r}: importlib.import_module(m)\n" \
           "assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
