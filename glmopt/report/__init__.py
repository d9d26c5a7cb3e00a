"""Turn a build record into report.json and report.md. Reads the record; computes nothing new."""

from __future__ import annotations

from pathlib import Path

from glmopt.fileutil import write_json

MODEL_ROWS = ("reference", "prune", "export", "fuse", "quantize")


def _mb(size: int | None) -> str:
    return "" if size is None else f"{size / 1e6:.1f} MB"


def stage_table(record: dict) -> list[dict]:
    """One row per model: the reference and each stage that produced one, with its figures."""
    evaluation = record.get("evaluation") or {}
    results = evaluation.get("models", {})
    seconds = {s["name"]: s["seconds"] for s in record["stages"]}
    sizes = {s["name"]: s.get("size_bytes") for s in record["stages"]}
    rows = []
    for name in MODEL_ROWS:
        if name != "reference" and name not in seconds:
            continue
        result = results.get(name, {})
        rows.append(
            {
                "stage": name,
                "seconds": seconds.get(name, record.get("load_seconds")),
                "size_bytes": result.get("size_bytes", sizes.get(name)),
                "latency_ms": (result.get("latency") or {}).get("median_ms"),
                "metrics": {m: v["value"] for m, v in result.get("metrics", {}).items()},
                "drop_pct": result.get("drop_pct", {}),
            }
        )
    return rows


def verdict_line(record: dict) -> str:
    evaluation = record.get("evaluation")
    if not evaluation or not evaluation.get("budgets"):
        return "No accuracy budget set: not checked."
    parts = []
    for c in evaluation["budgets"]:
        parts.append(f"{c['metric']} drop {c['drop_pct']:+.2f}% (budget {c['max_drop_pct']:.2f}%)")
    state = "WITHIN BUDGET" if evaluation["within_budget"] else "BUDGET MISSED"
    return f"{state}: " + "; ".join(parts)


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
        "| stage | seconds | size | latency (ms) | " + " | ".join(f"{m} | {m} drop" for m in metrics) + " |",
        "|---|---:|---:|---:|" + "---:|---:|" * len(metrics),
    ]
    for r in rows:
        cells = [
            r["stage"],
            "" if r["seconds"] is None else f"{r['seconds']:.1f}",
            _mb(r["size_bytes"]),
            "" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}",
        ]
        for m in metrics:
            v = r["metrics"].get(m)
            d = r["drop_pct"].get(m)
            cells += ["" if v is None else f"{v:.4g}", "" if d is None else f"{d:+.2f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Drop is the degradation against the reference (original PyTorch model) in percent; positive is worse."
    )
    evaluation = record.get("evaluation")
    if evaluation:
        lines += ["", "## Evaluation data", ""]
        for metric, d in evaluation["data"].items():
            lines.append(f"- {metric}: {d['source']}, {d['samples']} samples")
        lat = next(iter(evaluation["models"].values()))["latency"]
        lines.append(
            f"- latency: median of {lat['runs']} runs, batch x sequence {lat['shape']}, "
            f"threads {lat['threads'] or 'runtime default'}"
        )
    lines += ["", "## Stages", ""]
    for s in record["stages"]:
        details = {k: v for k, v in s.get("details", {}).items() if k != "models"}
        lines.append(f"- **{s['name']}** ({s['status']}, {s['seconds']:.1f} s): " + _short(details))
    return "\n".join(lines) + "\n"


def _short(details: dict) -> str:
    parts = []
    for key, value in details.items():
        if isinstance(value, dict | list) and len(str(value)) > 160:
            continue
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def write_reports(record: dict, folder: Path) -> None:
    write_json(folder / "report.json", record)
    (folder / "report.md").write_text(render_markdown(record))
