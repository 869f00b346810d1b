"""Run a batch of agent tasks: `python scripts/run_batch.py --tasks T --out DIR`.

The same entry point works run directly (a local Ray is started when none is running) and as
`ray job submit --working-dir . -- python scripts/run_batch.py ...`. `--help` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir

from pool.ops.cli import run  # noqa: E402

if __name__ == "__main__":
    run()
