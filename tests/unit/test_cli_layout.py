"""The `selfheal` commands: every command answers `--help`, and no module of pool/ops or
pool/bench passes 400 lines. No Ray here: `--help` starts nothing."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from pool.ops.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("bench", "failed", "grafana", "inspect", "pause", "plan", "resume", "retry", "run",
            "runs", "status", "stop")


def test_selfheal_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:")[1].split()
    assert set(COMMANDS) <= set(listed)
    assert sorted(main.commands) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"], prog_name="selfheal")
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.output.startswith(f"Usage: selfheal {command} [OPTIONS]")


@pytest.mark.parametrize("folder", ["pool/ops", "pool/bench"])
def test_no_module_of_ops_or_bench_passes_400_lines(folder: str) -> None:
    long = {p.name: n for p in sorted((ROOT / folder).glob("*.py"))
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
