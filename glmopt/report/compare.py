"""What changed between two builds: final metrics, sizes, latencies, exclusions and recipe settings."""

from __future__ import annotations

import json
from pathlib import Path

from glmopt.errors import InputError


def _load(folder: Path) -> tuple[dict, dict]:
    try:
        report = json.loads((folder / "report.json").read_text())
        recipe = json.loads((folder / "recipe.resolved.json").read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{folder}: not an artifact version ({Path(exc.filename).name} missing)") from None
    return report, recipe


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, item in enumerate(value):
            label = item.get("stage", item.get("metric", i))
            out.update(_flatten(item, f"{prefix}[{label}]"))
        return out
    return {prefix: value}


def _exclusions(report: dict) -> list[str]:
    """Node patterns kept in float in the final model: the recipe's exclusions plus the fallback's."""
    stage = next((s for s in report["stages"] if s["name"] == "quantize"), None)
    excluded = list(stage["details"].get("exclude_nodes", [])) if stage else []
    fallback = (report.get("evaluation") or {}).get("fallback") or {}
    if (report.get("evaluation") or {}).get("final") == "fallback":
        excluded += fallback.get("exclude_nodes", [])
    return excluded


def compare(a: Path, b: Path) -> dict:
    report_a, recipe_a = _load(a)
    report_b, recipe_b = _load(b)
    numbers = {}
    for key in sorted(set(report_a["metrics"]) | set(report_b["metrics"])):
        va, vb = report_a["metrics"].get(key), report_b["metrics"].get(key)
        if isinstance(va, int | float) and isinstance(vb, int | float):
            numbers[key] = {
                "a": va,
                "b": vb,
                "change": vb - va,
                "change_pct": (vb - va) / abs(va) * 100 if va else None,
            }
        elif isinstance(va, int | float) or isinstance(vb, int | float):
            numbers[key] = {"a": va, "b": vb}
    flat_a, flat_b = _flatten(recipe_a), _flatten(recipe_b)
    recipe_changes = {
        k: {"a": flat_a.get(k), "b": flat_b.get(k)}
        for k in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(k) != flat_b.get(k)
    }
    excl_a, excl_b = _exclusions(report_a), _exclusions(report_b)
    return {
        "a": {"path": str(a), "name": report_a["name"], "version": report_a["version"], "status": report_a["status"]},
        "b": {"path": str(b), "name": report_b["name"], "version": report_b["version"], "status": report_b["status"]},
        "metrics": numbers,
        "stage_seconds": {s["name"]: {"a": s["seconds"]} for s in report_a["stages"]}
        | {
            s["name"]: {
                "a": next((x["seconds"] for x in report_a["stages"] if x["name"] == s["name"]), None),
                "b": s["seconds"],
            }
            for s in report_b["stages"]
        },
        "exclusions": {"added": sorted(set(excl_b) - set(excl_a)), "removed": sorted(set(excl_a) - set(excl_b))},
        "recipe_changes": recipe_changes,
    }


def render_text(diff: dict) -> str:
    a, b = diff["a"], diff["b"]
    lines = [f"A: {a['name']}/{a['version']} ({a['status']})   B: {b['name']}/{b['version']} ({b['status']})", ""]
    lines.append("final model:")
    for key, v in diff["metrics"].items():
        if "change" in v:
            pct = f" ({v['change_pct']:+.2f}%)" if v.get("change_pct") is not None else ""
            lines.append(f"  {key:<12} {v['a']:>14.6g} -> {v['b']:<14.6g}{pct}")
        else:
            lines.append(f"  {key:<12} {v['a']} -> {v['b']}")
    if diff["exclusions"]["added"] or diff["exclusions"]["removed"]:
        lines.append(f"exclusions: +{diff['exclusions']['added']} -{diff['exclusions']['removed']}")
    lines.append("recipe changes:" if diff["recipe_changes"] else "recipe changes: none")
    for key, v in diff["recipe_changes"].items():
        lines.append(f"  {key}: {v['a']!r} -> {v['b']!r}")
    return "\n".join(lines)
