"""No recovery vs naive retry vs tiered self-healing on the shipped workload, with the real model:
`python scripts/compare_recovery.py --out out/compare` (`--help` for the flags).

The benchmark lives in pool/bench/compare.py, beside the others; this is its entry point.
"""

from pool.bench.compare import main

if __name__ == "__main__":
    main()
