"""A Grafana dashboard of the `selfheal_*` metrics, built from `pool.ops.metrics.METRICS`.

`selfheal grafana` prints it (import it in Grafana: Dashboards > New > Import); `--install`
writes it into the Ray session's provisioned dashboards folder, where the Grafana that Ray's
docs set up (`--config /tmp/ray/session_latest/metrics/grafana/grafana.ini`) loads it beside
Ray's own dashboards. Every panel filters by the `run` variable (a run's pool namespace).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pool.ops.metrics import METRICS, PREFIX

UID = "selfheal-agents"
SESSION_DASHBOARDS = Path("/tmp/ray/session_latest/metrics/grafana/dashboards")
_RUN = '{run=~"$run"}'


def _series(name: str, kind: str) -> str:
    """Prometheus name of a metric as Ray exports it (`ray_` prefix, `_total` for counters)."""
    return f"ray_{PREFIX}{name}" + ("_total" if kind == "counter" else "")


def _expr(name: str) -> list[tuple[str, str]]:
    """(PromQL, legend) of the panel of one metric."""
    kind, _, tags = METRICS[name]
    series = _series(name, kind)
    by = ", ".join(tags)
    if kind == "histogram":
        return [(f"histogram_quantile({q}, sum by (le) (rate({series}_bucket{_RUN}[5m])))", f"p{q[2:]}")
                for q in ("0.05", "0.5")]
    inner = f"rate({series}{_RUN}[5m])" if kind == "counter" else f"{series}{_RUN}"
    legend = " ".join(f"{t} {{{{{t}}}}}" for t in tags) or name
    return [(f"sum by ({by}) ({inner})" if by else f"sum({inner})", legend)]


def _panel(i: int, name: str) -> dict[str, Any]:
    kind, description, _ = METRICS[name]
    unit = "mbytes" if name.endswith("_mib") else "ops" if kind == "counter" else "short"
    title = name.replace("_", " ") + (" (per s)" if kind == "counter" else "")
    return {
        "id": i + 1, "type": "timeseries", "title": title, "description": description,
        "datasource": "${datasource}", "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"expr": expr, "legendFormat": legend, "refId": chr(ord("A") + k)}
                    for k, (expr, legend) in enumerate(_expr(name))],
    }


def dashboard() -> dict[str, Any]:
    variables = [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "hide": 0},
        {"name": "run", "type": "query", "datasource": "${datasource}", "includeAll": True,
         "multi": True, "allValue": ".+", "refresh": 2,
         "query": {"query": f"label_values({_series('agents', 'gauge')}, run)", "refId": "run"},
         "definition": f"label_values({_series('agents', 'gauge')}, run)"},
    ]
    return {
        "uid": UID, "title": "selfheal-agents", "tags": ["selfheal", "ray"], "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables},
        "panels": [_panel(i, name) for i, name in enumerate(METRICS)],
    }


def install(folder: Path = SESSION_DASHBOARDS) -> Path:
    """Write the dashboard where the Ray session's Grafana provisioning reads dashboards."""
    from agents.errors import UsageError

    if not folder.is_dir():
        raise UsageError(f"{folder} does not exist: start Ray on this machine first (its session "
                         "writes the Grafana provisioning there), or import the printed JSON")
    path = folder / "selfheal_grafana_dashboard.json"
    path.write_text(json.dumps(dashboard(), indent=2))
    return path
