"""report.html: one self-contained page (inline CSS and SVG, no scripts, no links out) that opens offline."""

from __future__ import annotations

import json
from html import escape

from glmopt.metrics import HIGHER_IS_BETTER
from glmopt.report import _mb, drop_text, quantization_line, seconds_text, stage_table, value_text, verdict_line
from glmopt.report.svg import PALETTE, bar_chart, histogram_plot, scatter, sensitivity_strip

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.verdict{padding:10px 14px;border-radius:6px;font-weight:600;margin:12px 0}
.ok{background:#e6f4ea;border:1px solid #55A868}.missed{background:#fbe9e9;border:1px solid #C44E52}
.unchecked{background:#f3f3f3;border:1px solid #aaa}
table{border-collapse:collapse;margin:8px 0;font-size:13px} td,th{border:1px solid #ddd;padding:4px 8px}
th{background:#f6f6f6} td.n{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:12px} .plots svg{border:1px solid #eee;background:#fff}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px} .muted{color:#666;font-size:13px}
"""


def render_html(record: dict) -> str:
    evaluation = record.get("evaluation") or {}
    verdict = verdict_line(record)
    css = "unchecked" if not evaluation.get("budgets") else ("ok" if evaluation["within_budget"] else "missed")
    body = [
        f"<h1>{escape(record['name'])} v{record['version']}</h1>",
        f'<div class="verdict {css}">{escape(verdict)}</div>',
        f'<p class="muted">Source <code>{escape(record["model"]["source"])}</code> '
        f"({escape(record['model']['model_type'])}, {escape(record['model']['task'])}); "
        f"built {escape(record['created'])} with glmopt {escape(record['tools'].get('glmopt', '?'))}.</p>",
    ]
    quantization = quantization_line(record)
    if quantization:
        body.append(f"<p>{escape(quantization)}</p>")
    body += _stage_section(record)
    body += _sensitivity_section(record)
    body += _fallback_section(record)
    body += _environment_section(record)
    recipe_text = record["recipe"].get("text")
    if recipe_text:
        body += ["<h2>Recipe</h2>", f"<pre>{escape(recipe_text)}</pre>"]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(record['name'])} v{record['version']}: glmopt report</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _stage_section(record: dict) -> list[str]:
    rows = stage_table(record)
    metrics = sorted({m for r in rows for m in r["metrics"]})
    out = ["<h2>Stages</h2>", "<table><tr><th>model</th><th>seconds</th><th>size</th><th>latency ms (p10-p90)</th>"]
    out[-1] += "".join(f"<th>{escape(m)} [95% CI]</th><th>{escape(m)} drop [95% CI]</th>" for m in metrics) + "</tr>"
    for r in rows:
        spread = r["latency_p10_p90_ms"]
        latency = "" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}"
        if latency and spread[0] is not None:
            latency += f" ({spread[0]:.1f}-{spread[1]:.1f})"
        cells = [
            escape(r["stage"]),
            escape(seconds_text(r)),
            _mb(r["size_bytes"]),
            latency,
        ]
        for m in metrics:
            cells.append(escape(value_text(r["metrics"].get(m), r["metrics_ci95"].get(m))))
            drop = r["drop_pct"].get(m) if r["stage"] != "reference" else None
            cells.append(escape(drop_text(drop, r["drop_ci95"].get(m))))
        out.append(
            "<tr>" + "".join(f'<td class="n">{c}</td>' if i else f"<td>{c}</td>" for i, c in enumerate(cells)) + "</tr>"
        )
    out.append("</table>")
    out.append(
        '<p class="muted">Drop: degradation against the reference (the original PyTorch model), '
        "positive is worse. Intervals: bootstrap over evaluation windows, pairs or documents, paired "
        "between models; a drop whose interval holds zero is within the evaluation's noise.</p>"
    )
    evaluation = record.get("evaluation") or {}
    if evaluation:
        lines = [
            f"{escape(m)}: {escape(d['source'])}, {d['samples']} {d.get('unit', 'samples')}"
            for m, d in evaluation["data"].items()
        ]
        out.append('<p class="muted">' + "; ".join(lines) + "</p>")
    measured = [r for r in rows if r["metrics"]]
    plots = []
    budgets = {c["metric"]: c for c in evaluation.get("budgets", [])}
    for m in metrics:
        have = [r for r in measured if m in r["metrics"]]
        errors = [tuple(r["metrics_ci95"][m]) if r["metrics_ci95"].get(m) else None for r in have]
        line = None
        if m in budgets and "reference" in evaluation.get("models", {}):
            ref = evaluation["models"]["reference"]["metrics"][m]["value"]
            limit = budgets[m]["max_drop_pct"] / 100.0
            bound = ref * (1 - limit) if HIGHER_IS_BETTER[m] else ref * (1 + limit)
            line = (bound, f"budget limit {bound:.4g}")
        plots.append(
            bar_chart(
                [r["stage"] for r in have],
                [r["metrics"][m] for r in have],
                f"{m} per stage",
                m,
                errors=errors,
                line=line,
            )
        )
    timed = [r for r in rows if r["latency_ms"] is not None]
    if timed:
        lat = next(iter(evaluation["models"].values()))["latency"]
        errors = [tuple(r["latency_p10_p90_ms"]) if r["latency_p10_p90_ms"][0] is not None else None for r in timed]
        plots.append(
            bar_chart(
                [r["stage"] for r in timed],
                [r["latency_ms"] for r in timed],
                f"latency, batch x sequence {lat['shape'][0]}x{lat['shape'][1]} (median, p10-p90)",
                "ms",
                errors=errors,
            )
        )
    for m in metrics:
        points = [
            (r["size_bytes"] / 1e6, r["metrics"][m], r["stage"])
            for r in measured
            if m in r["metrics"] and r["size_bytes"]
        ]
        if points:
            plots.append(scatter(points, f"size against {m}", "size (MB)", m))
    if plots:
        out.append('<div class="plots">' + "\n".join(plots) + "</div>")
    return out


def _sensitivity_section(record: dict) -> list[str]:
    sensitivity = record.get("sensitivity") or {}
    nodes = sensitivity.get("nodes") or []
    if not nodes:
        return []
    evaluation = record.get("evaluation") or {}
    out = [
        "<h2>Per-node sensitivity</h2>",
        f'<p class="muted">SQNR of each quantized node\'s output when it alone is quantized, on '
        f"{sensitivity['tokens']} calibration tokens (FP32 inputs, simulated INT8 activation and weight). "
        "Lower is worse; about 6 dB per bit.</p>",
    ]
    order = sensitivity.get("graph_order") or [n["node"] for n in nodes]
    by_name = {n["node"]: n for n in nodes}
    worst = {n["node"] for n in nodes[:10]}
    out.append(
        sensitivity_strip(
            order,
            [by_name[n]["sqnr_db"] for n in order if n in by_name],
            worst,
            f"SQNR of {len(nodes)} quantized nodes",
        )
    )
    out.append("<table><tr><th>node</th><th>op</th><th>SQNR dB</th><th>activation only</th><th>weight only</th></tr>")
    for n in nodes[:10]:
        act = "" if n["activation_sqnr_db"] is None else f"{n['activation_sqnr_db']:.1f}"
        out.append(
            f"<tr><td><code>{escape(n['node'])}</code></td><td>{escape(n['op_type'])}</td>"
            f'<td class="n">{n["sqnr_db"]:.1f}</td><td class="n">{act}</td>'
            f'<td class="n">{n["weight_sqnr_db"]:.1f}</td></tr>'
        )
    out.append("</table>")
    costs = evaluation.get("node_metric_cost") or []
    if costs:
        out.append("<p>Metric cost of quantizing each of the worst nodes alone (everything else in float):</p>")
        out.append("<table><tr><th>node</th><th>metric</th><th>value</th><th>drop [95% CI]</th></tr>")
        for c in costs:
            for m, drop in c["drop_pct"].items():
                out.append(
                    f"<tr><td><code>{escape(c['node'])}</code></td><td>{escape(m)}</td>"
                    f'<td class="n">{c["metrics"][m]:.4g}</td>'
                    f'<td class="n">{escape(drop_text(drop, c["drop_ci95"].get(m)))}</td></tr>'
                )
        out.append("</table>")
    hists = sensitivity.get("histograms") or {}
    if hists:
        out.append("<h2>Calibration ranges of the most sensitive activations</h2>")
        out.append(
            '<p class="muted">Histogram of calibration activations (log counts) and each method\'s range; '
            "the range this build used is named in the title.</p>"
        )
        colors = {"entropy": PALETTE[3], "minmax": PALETTE[2], "percentile": PALETTE[1]}
        plots = []
        for h in hists.values():
            markers = []
            for method, (lo, hi) in h["ranges"].items():
                label = f"{method}{' (used)' if method == h['used'] else ''} [{lo:.3g}, {hi:.3g}]"
                markers += [(lo, "", colors[method]), (hi, label, colors[method])]
            plots.append(
                histogram_plot(
                    h["histogram"]["lo"],
                    h["histogram"]["hi"],
                    h["histogram"]["counts"],
                    markers,
                    f"input of {short_node(h['node'])}",
                )
            )
        out.append('<div class="plots">' + "\n".join(plots) + "</div>")
    return out


def short_node(name: str) -> str:
    """`/model/layers.3/mlp/down_proj/MatMul` -> `layers.3/mlp/down_proj`: what fits in a plot title."""
    for prefix in ("/model/", "model.", "/"):
        name = name.removeprefix(prefix)
    return name.rsplit("/", 1)[0] if "/" in name else name


def _fallback_section(record: dict) -> list[str]:
    evaluation = record.get("evaluation") or {}
    fallback = evaluation.get("fallback")
    if not fallback:
        return []
    target = "weight-only" if fallback.get("to") == "weight_only" else "float"
    out = [
        f"<h2>Fallback to {target}</h2>",
        f"<p>{len(fallback['trials'])} trial(s) in {fallback['seconds']:.0f} s; stopped: "
        f"{escape(fallback['stopped'])}. Best model: {fallback['float_nodes']} node(s) made {target}, "
        + ("within budget." if fallback["within_budget"] else "<strong>budget still missed</strong>.")
        + "</p>",
    ]
    budgets = {c["metric"]: c["max_drop_pct"] for c in evaluation.get("budgets", [])}
    plots = []
    quantize = evaluation["models"].get("quantize", {})
    for m, limit in budgets.items():
        points = [(0.0, quantize.get("drop_pct", {}).get(m, float("nan")), "plain INT8")]
        points += [
            (float(t["float_nodes"]), t["drop_pct"][m], f"trial {i + 1}") for i, t in enumerate(fallback["trials"])
        ]
        points = sorted(p for p in points if p[1] == p[1])
        plots.append(
            scatter(
                points,
                f"{m} drop against nodes kept in float",
                "nodes in float",
                f"{m} drop (%)",
                connect=True,
                line=(limit, f"budget {limit:g}%"),
            )
        )
    if plots:
        out.append('<div class="plots">' + "\n".join(plots) + "</div>")
    if fallback["exclude_nodes"]:
        snippet = "exclude_nodes:\n" + "\n".join(f'  - "{n}"' for n in fallback["exclude_nodes"])
        out += [
            "<p>To build the best model directly, add to the recipe's quantize stage "
            "(also in <code>fallback.json</code>):</p>",
            f"<pre>{escape(snippet)}</pre>",
        ]
    return out


def _environment_section(record: dict) -> list[str]:
    host = record.get("host", {})
    evaluation = record.get("evaluation") or {}
    latency = next(iter(evaluation.get("models", {}).values()), {}).get("latency", {})
    rows = [
        ("CPU", host.get("cpu_model") or host.get("processor") or host.get("machine", "")),
        ("cores", host.get("cpus")),
        ("platform", host.get("platform")),
        ("execution providers", ", ".join(host.get("providers", []))),
        ("latency threads", latency.get("threads") or f"runtime default ({latency.get('threads_effective', '?')})"),
    ]
    rows += [(name, version) for name, version in sorted(record.get("tools", {}).items())]
    out = ["<h2>Environment</h2>", "<table>"]
    out += [f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in rows]
    out.append("</table>")
    out.append(
        f"<details><summary>stage details (JSON)</summary><pre>"
        f"{escape(json.dumps([{k: v for k, v in s.items()} for s in record['stages']], indent=1))}"
        "</pre></details>"
    )
    return out
