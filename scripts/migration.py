"""Migration off a GPU under memory pressure: `python scripts/migration.py --out out/migration`
(`--help` for the flags).

The benchmark lives in pool/bench/migration.py, beside the others; this is its entry point.
"""

import sys

from pool.bench.migration import main

if __name__ == "__main__":
    sys.exit(main())
