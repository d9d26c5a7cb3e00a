"""Turn a build record into report.json and report.md. Reads the record; computes nothing new."""

from __future__ import annotations

from pathlib import Path

from glmopt.fileutil import write_json

MODEL_ROWS = ("reference", "prune", "smooth", "export", "fuse", "quantize", "fallback")


def _mb(size: int | None) -> str:
    return "" if size is None else f"{size / 1e6:.1f} MB"


def seconds_text(row: dict) -> str:
    """A stage row's time; a stage taken from the cache shows what it took when it ran."""
    if row["seconds"] is None:
        return ""
    if row.get("cached_from_seconds") is not None:
        return f"{row['seconds']:.1f} (cached; ran in {row['cached_from_seconds']:.1f})"
    return f"{row['seconds']:.1f}"


def stage_table(record: dict) -> list[dict]:
    """One row per model: the reference and each stage that produced one, with its figures."""
    evaluation = record.get("evaluation") or {}
    results = evaluation.get("models", {})
    seconds = {s["name"]: s["seconds"] for s in record["stages"]}
    sizes = {s["name"]: s.get("size_bytes") for s in record["stages"]}
    cached = {s["name"]: s["cache"].get("original_seconds") for s in record["stages"] if "cache" in s}
    rows = []
    for name in MODEL_ROWS:
        if name != "reference" and name not in seconds:
            continue
        result = results.get(name, {})
        rows.append(
            {
                "stage": name,
                "seconds": seconds.get(name, record.get("load_seconds")),
                "cached_from_seconds": cached.get(name),
                "size_bytes": result.get("size_bytes", sizes.get(name)),
                "latency_ms": (result.get("latency") or {}).get("median_ms"),
                "latency_p10_p90_ms": [
                    (result.get("latency") or {}).get("p10_ms"),
                    (result.get("latency") or {}).get("p90_ms"),
                ],
                "metrics": {m: v["value"] for m, v in result.get("metrics", {}).items()},
                "metrics_ci95": {m: v.get("ci95") for m, v in result.get("metrics", {}).items()},
                "drop_pct": result.get("drop_pct", {}),
                "drop_ci95": result.get("drop_ci95", {}),
            }
        )
    return rows


def verdict_line(record: dict) -> str:
    evaluation = record.get("evaluation")
    if not evaluation or not evaluation.get("budgets"):
        return "No accuracy budget set: not checked."
    parts = []
    for c in evaluation["budgets"]:
        gap = c["max_drop_pct"] - c["drop_pct"]
        how = f"{gap:.3g} points to spare" if gap >= 0 else f"over by {-gap:.3g} points"
        if c.get("margin_within_noise"):
            how += ", within the 95% interval of the drop"
        parts.append(f"{c['metric']} drop {c['drop_pct']:+.2f}% (budget {c['max_drop_pct']:.2f}%, {how})")
    state = "WITHIN BUDGET" if evaluation["within_budget"] else "BUDGET MISSED"
    line = f"{state}: " + "; ".join(parts)
    fallback = evaluation.get("fallback")
    if fallback and fallback.get("trials"):
        kept = "weight-only" if fallback.get("to") == "weight_only" else "in float"
        line += f". Fallback kept {fallback['float_nodes']} node(s) {kept} after {len(fallback['trials'])} trial(s)"
    return line


def quantization_line(record: dict) -> str | None:
    """Which quantization mode the artifact uses, and why (the recipe's reason, or the mode's own)."""
    stage = next((s for s in record["stages"] if s["name"] == "quantize"), None)
    if stage is None:
        return None
    details = stage["details"]
    if details.get("mode") == "weight_only":
        what = (
            f"weight-only INT{details['bits']} (MatMulNBits, blocks of {details['block_size']}, "
            f"{details['quantized_nodes']} nodes)"
        )
    else:
        per_method = ", ".join(f"{m} {n}" for m, n in details.get("tensors_per_method", {}).items())
        what = f"static INT8 (QDQ, {details.get('quantized_nodes', '?')} nodes; activation ranges: {per_method})"
        mixed = details.get("weight_only")
        if mixed:
            what += f", plus {len(mixed['nodes'])} nodes weight-only INT{mixed['bits']} (MatMulNBits)"
    reason = details.get("reason")
    return f"Quantization: {what}." + (f" Why: {reason}." if reason else "")


def drop_text(drop: float | None, interval: list[float] | None) -> str:
    """A drop with its 95% interval, flagged when the interval holds zero (smaller than the noise)."""
    if drop is None:
        return ""
    if not interval or interval[0] is None or interval[0] == interval[1]:
        return f"{drop:+.2f}%"
    lo, hi = interval
    noise = " (within noise)" if lo <= 0.0 <= hi else ""
    return f"{drop:+.2f}% [{lo:+.2f}, {hi:+.2f}]{noise}"


def value_text(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return ""
    if not interval:
        return f"{value:.4g}"
    return f"{value:.4g} [{interval[0]:.4g}, {interval[1]:.4g}]"


def render_markdown(record: dict) -> str:
    rows = stage_table(record)
    metrics = sorted({m for r in rows for m in r["metrics"]})
    lines = [
        f"# {record['name']} v{record['version']}",
        "",
        f"**{verdict_line(record)}**",
        "",
        f"Source: `{record['model']['source']}` ({record['model']['model_type']}, {record['model']['task']}). "
        f"Recipe: `{record['recipe']['file']}`. Built {record['created']} with glmopt {record['tools']['glmopt']}.",
        "",
        *([quantization, ""] if (quantization := quantization_line(record)) else []),
        "| stage | seconds | size | latency (ms) | " + " | ".join(f"{m} | {m} drop" for m in metrics) + " |",
        "|---|---:|---:|---:|" + "---:|---:|" * len(metrics),
    ]
    for r in rows:
        cells = [
            r["stage"],
            seconds_text(r),
            _mb(r["size_bytes"]),
            "" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}",
        ]
        for m in metrics:
            cells += [
                value_text(r["metrics"].get(m), r["metrics_ci95"].get(m)),
                drop_text(r["drop_pct"].get(m), r["drop_ci95"].get(m)) if r["stage"] != "reference" else "",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Drop is the degradation against the reference (original PyTorch model) in percent; positive is worse. "
        "Brackets hold 95% bootstrap intervals (drops: paired, on the same samples); a drop whose interval "
        "holds zero is smaller than the evaluation's noise."
    )
    lines += sensitivity_markdown(record)
    evaluation = record.get("evaluation")
    if evaluation:
        lines += ["", "## Evaluation data", ""]
        for metric, d in evaluation["data"].items():
            lines.append(f"- {metric}: {d['source']}, {d['samples']} {d.get('unit', 'samples')}")
        lat = next(iter(evaluation["models"].values()))["latency"]
        threads = lat["threads"] or f"runtime default ({lat.get('threads_effective', '?')} on this host)"
        lines.append(
            f"- latency: median of {lat['runs']} runs after {lat.get('warmup', '?')} warm-up runs "
            f"(p10-p90 spread in the HTML report), batch x sequence {lat['shape']}, threads {threads}"
        )
    lines += ["", "## Stages", ""]
    for s in record["stages"]:
        details = {k: v for k, v in s.get("details", {}).items() if k != "models"}
        origin = " from the stage cache" if s.get("cache", {}).get("status") == "hit" else ""
        lines.append(f"- **{s['name']}** ({s['status']}, {s['seconds']:.1f} s{origin}): " + _short(details))
    return "\n".join(lines) + "\n"


def sensitivity_markdown(record: dict) -> list[str]:
    lines: list[str] = []
    sensitivity = record.get("sensitivity") or {}
    nodes = sensitivity.get("nodes") or []
    if nodes:
        lines += [
            "",
            f"## Most sensitive nodes (SQNR when quantized alone, {sensitivity['tokens']} calibration tokens)",
            "",
            "| node | SQNR dB | activation only | weight only |",
            "|---|---:|---:|---:|",
        ]
        for n in nodes[:10]:
            act = "" if n["activation_sqnr_db"] is None else f"{n['activation_sqnr_db']:.1f}"
            lines.append(f"| `{n['node']}` | {n['sqnr_db']:.1f} | {act} | {n['weight_sqnr_db']:.1f} |")
    evaluation = record.get("evaluation") or {}
    costs = evaluation.get("node_metric_cost") or []
    if costs:
        lines += ["", "Metric cost of quantizing each of the worst nodes alone (the rest of the model in float):", ""]
        for c in costs:
            parts = [f"{m} {drop_text(c['drop_pct'][m], c['drop_ci95'].get(m))}" for m in c["drop_pct"]]
            lines.append(f"- `{c['node']}`: " + ", ".join(parts))
    fallback = evaluation.get("fallback")
    if fallback:
        lines += ["", "## Fallback to float", ""]
        lines.append(
            f"{len(fallback['trials'])} trial(s) in {fallback['seconds']:.0f} s; stopped: {fallback['stopped']}. "
            f"Best model: {fallback['float_nodes']} node(s) in float, "
            + ("within budget." if fallback["within_budget"] else "budget still missed.")
        )
        lines += [
            "",
            "| float nodes | "
            + " | ".join(f"{m} drop" for m in _trial_metrics(fallback))
            + " | size | latency (ms) | passed |",
            "|---:|" + "---:|" * (len(_trial_metrics(fallback)) + 3),
        ]
        for t in fallback["trials"]:
            drops = " | ".join(f"{t['drop_pct'][m]:+.2f}%" for m in _trial_metrics(fallback))
            lines.append(
                f"| {t['float_nodes']} | {drops} | {_mb(t['size_bytes'])} | {t['latency_ms']:.1f} | "
                f"{'yes' if t['passed'] else 'no'} |"
            )
        if fallback["exclude_nodes"]:
            lines += [
                "",
                "To build this model directly, add to the recipe's quantize stage:",
                "",
                "```yaml",
                "exclude_nodes:",
            ]
            lines += [f'  - "{n}"' for n in fallback["exclude_nodes"]]
            lines.append("```")
    return lines


def _trial_metrics(fallback: dict) -> list[str]:
    return sorted({m for t in fallback["trials"] for m in t["drop_pct"]})


def _short(details: dict) -> str:
    parts = []
    for key, value in details.items():
        if isinstance(value, dict | list) and len(str(value)) > 160:
            continue
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def write_reports(record: dict, folder: Path) -> None:
    from glmopt.report.html import render_html

    write_json(folder / "report.json", record)
    (folder / "report.md").write_text(render_markdown(record))
    (folder / "report.html").write_text(render_html(record))
