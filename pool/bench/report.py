"""The benchmark's table (rich) and plot (matplotlib, Agg): figures, targets, verdicts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

Row = tuple[str, str, str, str, bool | None]  # benchmark, figure, value, target, met


def _g(res: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(res, dict) or key not in res:
            return None
        res = res[key]
    return res


def _f(value: Any, fmt: str = "{:.1f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _check(value: Any, ok: Callable[[Any], bool]) -> bool | None:
    return None if value is None else bool(ok(value))


def _activation(res: dict[str, Any]) -> list[Row]:
    a = res.get("activation")
    if not a:
        return []
    hot, disk, naive = a["hot"], a["disk"], a["naive"]
    return [
        ("activation", "warm bind, hot tier p50 / p99", f"{_f(hot['p50'], '{:.2f}')} / "
         f"{_f(hot['p99'], '{:.2f}')} ms", "<= 25 / <= 100 ms",
         _check(hot["p50"], lambda v: v <= 25 and (hot["p99"] or 1e9) <= 100)),
        ("activation", "warm bind, disk p50 / p99", f"{_f(disk['p50'], '{:.2f}')} / "
         f"{_f(disk['p99'], '{:.2f}')} ms", "<= 25 / <= 100 ms",
         _check(disk["p50"], lambda v: v <= 25 and (disk["p99"] or 1e9) <= 100)),
        ("activation", "new actor per agent p50 / p99", f"{_f(naive['p50'])} / {_f(naive['p99'])} ms",
         "baseline", None),
        ("activation", "speed-up p50 (hot / disk)",
         f"{_f(a['speedup_hot_p50'])}x / {_f(a['speedup_disk_p50'])}x", ">= 20x",
         _check(a["speedup_disk_p50"], lambda v: v >= 20 and (a["speedup_hot_p50"] or 0) >= 20)),
    ]


def _kv(res: dict[str, Any]) -> list[Row]:
    k = res.get("kv_restore")
    if not k:
        return []
    w, wh, wo = k["with_kv"], k["with_kv_whole"], k["without_kv"]
    return [
        ("activation llama.cpp", "bind p50 / p99 with KV (the engine's copy)",
         f"{_f(w['bind']['p50'])} / {_f(w['bind']['p99'])} ms", "p50 <= 10 ms",
         _check(w["bind"]["p50"], lambda v: v <= 10)),
        ("activation llama.cpp", "bind p50 with the whole KV / without KV",
         f"{_f(wh['bind']['p50'])} / {_f(wo['bind']['p50'])} ms", "", None),
        ("activation llama.cpp", "bind + first answer p50 with / without KV",
         f"{_f(w['first_answer']['p50'])} / {_f(wo['first_answer']['p50'])} ms",
         "KV saves prompt eval", _check(k["first_answer_saving_p50_ms"], lambda v: v > 0)),
    ]


def _scale(res: dict[str, Any]) -> list[Row]:
    s = res.get("scale")
    if not s:
        return []
    big, ref = s["large"], s["small"]
    n = f"{big['agents']:,}"
    return [
        ("scale", f"registration ({n} agents)",
         f"{_f(big['register_s'], '{:.1f}')} s, {_f(big['register_per_s'], '{:,.0f}')} /s",
         ">= 16,667 /s (1M in 60 s)", _check(big["register_per_s"], lambda v: v >= 1e6 / 60)),
        ("scale", "manager memory per dormant agent (RSS / traced)",
         f"{_f(big['manager_rss_bytes_per_agent'], '{:,.0f}')} / "
         f"{_f(big['manager_traced_bytes_per_agent'], '{:,.0f}')} B", "traced <= 1 KB",
         _check(big["manager_traced_bytes_per_agent"], lambda v: v <= 1024)),
        ("scale", "disk per agent (allocated / apparent)",
         f"{_f(big['disk_bytes_per_agent'], '{:,.0f}')} / "
         f"{_f(big['disk_apparent_bytes_per_agent'], '{:,.0f}')} B", "", None),
        ("scale", f"activation p50 / p99 at {n}",
         f"{_f(big['activation_ms']['p50'])} / {_f(big['activation_ms']['p99'])} ms", "", None),
        ("scale", f"activation p50 / p99 at {ref['agents']:,}",
         f"{_f(ref['activation_ms']['p50'])} / {_f(ref['activation_ms']['p99'])} ms", "", None),
        ("scale", "activation p50 ratio large / small", f"{_f(s['activation_p50_ratio'], '{:.2f}')}x",
         "<= 1.2x", _check(s["activation_p50_ratio"], lambda v: v <= 1.2)),
    ]


def _overhead(res: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    o = res.get("overhead")
    if o:
        p = o["pool_steps_per_s"]["p50"]
        rows += [
            ("pool overhead", "scripted agent-steps/s pool / bare Ray (p50)",
             f"{_f(p, '{:.0f}')} / {_f(o['bare_steps_per_s']['p50'], '{:.0f}')}", ">= 500 (pool)",
             _check(p, lambda v: v >= 500)),
            ("pool overhead", "ratio pool / bare", f"{_f(o['ratio_p50'], '{:.2f}')}x", "", None),
        ]
    r = res.get("real_model")
    if r:
        rows += [
            ("pool vs llama-server", f"tasks/s pool / llama-server, {r['slots']} slots ({r['tasks']} tasks"
             f"{', agents at one priority' if r.get('one_priority') else ''})",
             f"{_f(r['pool_tasks_per_s']['p50'], '{:.2f}')} / {_f(r['server_tasks_per_s']['p50'], '{:.2f}')}"
             f" = {_f(r['ratio_tasks_p50'], '{:.2f}')}x", ">= 1.0x (overhead < 5%)",
             _check(r["ratio_tasks_p50"], lambda v: v >= 0.95)),
            ("pool vs llama-server", "llama-server with each agent's tasks in order: tasks/s; pool / it",
             f"{_f(r.get('server_in_order_tasks_per_s', {}).get('p50'), '{:.2f}')}"
             f" = {_f(r.get('ratio_tasks_in_order_p50'), '{:.2f}')}x", "", None),
            ("pool vs llama-server", "task latency p50 / p95 ratio",
             f"{_f(r['ratio_latency_p50'], '{:.2f}')}x / {_f(r['ratio_latency_p95'], '{:.2f}')}x",
             "<= 1.3x", _check(r["ratio_latency_p50"], lambda v: v <= 1.3)),
            ("pool vs llama-server", "pool's engine share of the CPU used in its rounds (p50)",
             f"{_f(r.get('pool_engine_cpu_share', {}).get('p50'), '{:.0%}')}", "", None),
            ("pool vs llama-server", "engine decode steps per task, pool / llama-server (p50)",
             _pair(r, "decodes_per_task", "{:.2f}"), "", None),
            ("pool vs llama-server", "tokens per decode step, pool / llama-server (p50)",
             _pair(r, "tokens_per_decode", "{:.1f}"), "", None),
            ("pool vs llama-server", "ms of the round per decode step, pool / llama-server (p50)",
             _pair(r, "ms_per_decode", "{:.0f}"), "", None),
            ("pool vs llama-server", "prompt tokens evaluated per task, pool / llama-server (p50)",
             _pair(r, "prompt_tokens_per_task", "{:.1f}"), "", None),
            ("pool vs llama-server", "tokens generated per task, pool / llama-server (p50)",
             _pair(r, "generated_tokens_per_task", "{:.1f}"), "", None),
        ]
    return rows


def _pair(r: dict[str, Any], name: str, fmt: str) -> str:
    """`pool / llama-server` of one figure's medians (a result from before it was measured: n/a)."""
    return " / ".join(_f(r.get(f"{side}_{name}", {}).get("p50"), fmt) for side in ("pool", "server"))


def _healing(res: dict[str, Any]) -> list[Row]:
    h = res.get("healing")
    if not h:
        return []
    rows: list[Row] = []
    for name, p in h["policies"].items():
        tiered = name == "tiered"
        rows += [
            (f"self-healing: {name}", "success / FAILED rate",
             f"{100 * p['success_rate']:.1f}% / {100 * p['failed_rate']:.2f}%",
             "FAILED <= 1.0%" if tiered else "", _check(p["failed_rate"], lambda v: v <= 0.01)
             if tiered else None),
            (f"self-healing: {name}", "false-positive failures / false negatives / lost",
             f"{p['false_positive_failures']} / {p['false_negatives']} / {p['lost']}",
             "lost = 0", p["lost"] == 0 and p["duplicates"] == 0),
            (f"self-healing: {name}", "mean attempts / time to recovery p50",
             f"{p['mean_attempts']:.2f} / {_f(p['time_to_recovery_ms']['p50'])} ms", "", None),
        ]
    rows.append(("self-healing", "false-positive failures vs naive",
                 f"{_f(_pct(h['fp_reduction_vs_naive']))}% fewer", ">= 85% fewer",
                 _check(h["fp_reduction_vs_naive"], lambda v: v >= 0.85)))
    b = h["budget"].get("tiered") or next(iter(h["budget"].values()))
    crossed = sum(x["ledger_crossed"] + x["slots_crossed"] for x in h["budget"].values())
    rows.append(("budget fidelity", "peak VRAM ledger / limit (budget)",
                 f"{b['peak_ledger_mib']:.0f} / {b['limit_mib']:.0f} ({b['budget_mib']}) MiB",
                 "never crossed", crossed == 0))
    rows.append(("budget fidelity", "peak residents per GPU / slot cap",
                 f"{b['peak_residents_per_gpu']} / {b['slots_per_gpu']}", "never crossed", crossed == 0))
    return rows


def _pct(v: Any) -> Any:
    return None if v is None else 100 * v


def _ram(res: dict[str, Any]) -> list[Row]:
    r = res.get("ram")
    if not r:
        return []
    a, b = r["shared_engine"], r["engine_per_host"]
    return [
        ("host RAM", f"{r['residents']} residents: PSS shared engine / engine per Host",
         f"{a['pss_mib']:.0f} / {b['pss_mib']:.0f} MiB = {_f(r['ratio_pss'], '{:.2f}')}x", "< 1x",
         _check(r["ratio_pss"], lambda v: v < 1)),
        ("host RAM", "RSS sums (mmap'd weights counted per process)",
         f"{a['rss_mib']:.0f} / {b['rss_mib']:.0f} MiB = {_f(r['ratio_rss'], '{:.2f}')}x", "", None),
    ]


def rows(res: dict[str, Any]) -> list[Row]:
    from pool.bench.returning import report_rows  # its figures live with it

    return (_activation(res) + _kv(res) + _scale(res) + _overhead(res) + _ram(res) + _healing(res)
            + report_rows(res))


def table(res: dict[str, Any]) -> Table:
    t = Table(title=f"selfheal bench ({res['meta'].get('wall_s', 0):.0f} s, "
                    f"{res['meta'].get('cpus')} cores)")
    for col in ("benchmark", "figure", "value", "target", "met"):
        t.add_column(col)
    mark = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}
    for bench, figure, value, target, met in rows(res):
        t.add_row(bench, figure, value, target, mark[met])
    return t


def markdown(res: dict[str, Any]) -> str:
    """The same table as Markdown (for a closing note)."""
    lines = ["| benchmark | figure | value | target | met |", "|---|---|---|---|---|"]
    for bench, figure, value, target, met in rows(res):
        lines.append(f"| {bench} | {figure} | {value} | {target} | "
                     f"{'' if met is None else 'yes' if met else 'no'} |")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in (_plot_activation, _plot_kv, _plot_healing) if p(res, None)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for draw, ax in zip(panels, axes[0], strict=True):
        draw(res, ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_activation(res: dict[str, Any], ax: Any) -> bool:
    samples = _g(res, "activation", "samples_ms")
    if not samples or ax is None:
        return bool(samples)
    labels = {"hot": "warm Host, hot tier", "disk": "warm Host, from disk",
              "naive": "new actor per agent"}
    for tier, values in samples.items():
        v = sorted(values)
        ax.step(v, [(i + 1) / len(v) for i in range(len(v))], where="post",
                label=f"{labels.get(tier, tier)} (p50 {v[len(v) // 2]:.1f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("activation latency (ms, log)")
    ax.set_ylabel("fraction of activations")
    ax.set_title("Activation: dormant -> resident")
    ax.legend(fontsize=8)
    return True


def _plot_kv(res: dict[str, Any], ax: Any) -> bool:
    k = res.get("kv_restore")
    if not k or ax is None:
        return bool(k)
    variants = {"with_kv": "KV (engine's copy)", "with_kv_whole": "whole KV", "without_kv": "no KV"}
    bind = [k[v]["bind"]["p50"] or 0 for v in variants]
    answer = [(k[v]["first_answer"]["p50"] or 0) - b for v, b in zip(variants, bind, strict=True)]
    ax.bar(list(variants.values()), bind, label="bind")
    ax.bar(list(variants.values()), answer, bottom=bind, label="first answer")
    ax.set_ylabel("ms (p50)")
    ax.set_title(f"llama.cpp: bind + first answer ({k['memory_turns']} memory turns)")
    ax.legend(fontsize=8)
    return True


def _plot_healing(res: dict[str, Any], ax: Any) -> bool:
    h = res.get("healing")
    if not h or ax is None:
        return bool(h)
    names = list(h["policies"])
    n = h["tasks"]
    series = {"succeeded": [h["policies"][p]["succeeded"] / n for p in names],
              "FAILED": [h["policies"][p]["failed_rate"] for p in names],
              "false-positive failures": [h["policies"][p]["false_positive_failures"] / n
                                          for p in names]}
    width = 0.27
    for i, (label, values) in enumerate(series.items()):
        xs = [j + (i - 1) * width for j in range(len(names))]
        bars = ax.bar(xs, [100 * v for v in values], width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("% of tasks")
    ax.set_title(f"Self-healing: {n:,} tasks, seeded faults")
    ax.legend(fontsize=8)
    return True
