"""`selfheal bench` as a script: `python scripts/bench.py --quick --out out/bench`."""

from pool.bench.cli import bench

if __name__ == "__main__":
    bench()
