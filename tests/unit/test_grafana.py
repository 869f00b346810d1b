"""The Grafana dashboard covers every exported metric, each filtered by run."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.errors import UsageError
from pool.ops.cli import main
from pool.ops.grafana import dashboard, install
from pool.ops.metrics import METRICS


def test_every_metric_has_a_panel_filtered_by_run() -> None:
    d = dashboard()
    exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
    for name, (kind, _, _) in METRICS.items():
        series = f"ray_selfheal_{name}" + ("_total" if kind == "counter" else "")
        assert any(re.search(rf"\b{series}(_bucket)?\{{run=~\"\$run\"\}}", e) for e in exprs), name
    assert [v["name"] for v in d["templating"]["list"]] == ["datasource", "run"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) == len(METRICS)


def test_tagged_metrics_are_split_by_their_tags() -> None:
    panel = next(p for p in dashboard()["panels"] if p["title"].startswith("recoveries"))
    assert panel["targets"][0]["expr"].startswith("sum by (tier, action) (rate(")


def test_cli_prints_json_and_install_needs_a_ray_session(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["grafana"])
    assert out.exit_code == 0 and json.loads(out.output)["uid"] == "selfheal-agents"
    assert install(tmp_path).name == "selfheal_grafana_dashboard.json"
    with pytest.raises(UsageError, match="start Ray on this machine first"):
        install(tmp_path / "missing")
