"""pool/bench is the one home of the benchmarks: the scripts that run them are entry points
only, and each benchmark moved there still answers `--help`. No Ray here."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("script", "module"), [("compare_recovery.py", "pool.bench.compare"),
                                                ("migration.py", "pool.bench.migration"),
                                                ("bench.py", "pool.bench.cli")])
def test_benchmark_scripts_only_call_into_pool_bench(script: str, module: str) -> None:
    tree = ast.parse((ROOT / "scripts" / script).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    defined = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert module in imported and not defined


@pytest.mark.parametrize(("module", "first_line"), [
    ("pool.bench.compare", "No recovery vs naive retry vs tiered self-healing"),
    ("pool.bench.migration", "Migration off a GPU under memory pressure"),
])
def test_moved_benchmarks_answer_help(module: str, first_line: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    bench = importlib.import_module(module)
    with pytest.raises(SystemExit) as exited:
        bench.main(["--help"])
    assert exited.value.code == 0
    assert first_line in capsys.readouterr().out


def test_compare_recovery_names_an_unknown_policy_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from pool.bench.compare import DEFAULT_RUNS, RUNS, main

    with pytest.raises(SystemExit) as exited:
        main(["--policies", "tiered,tierd"])
    assert exited.value.code == 2
    assert "--policies: unknown tierd (of: none, naive, tiered, constrained, tiered-constrained-first)" in \
        capsys.readouterr().err
    assert set(DEFAULT_RUNS) < set(RUNS) and "tiered-constrained-first" not in DEFAULT_RUNS
    assert RUNS["tiered-constrained-first"] == {"mode": "tiered", "greedy_constrained_first": True}
