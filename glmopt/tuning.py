"""Accuracy-driven steps after evaluation: the metric cost of the most sensitive nodes, and fallback.

Fallback keeps the most sensitive quantized nodes (ranked by SQNR in the quantize stage) in float and
re-quantizes from the same calibration ranges, until the evaluation budgets hold or the recipe's trial
or time limit is reached. Counts grow by doubling until a trial passes, then bisection looks for the
fewest float nodes that still pass, so a budget is met with as much of the model in INT8 as it allows.
"""

from __future__ import annotations

import time
from pathlib import Path

from glmopt.onnx_utils import model_files
from glmopt.stages.base import ModelHandle
from glmopt.stages.evaluate import Evaluator, FallbackConfig
from glmopt.stages.quantize import QuantizeState


def glob_literal(name: str) -> str:
    """A node name as a glob pattern that matches only itself (for exclude_nodes)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def overshoot(checks: list[dict]) -> float:
    """How far a model is outside its budgets, in drop percentage points summed over metrics (0 = within)."""
    return sum(max(0.0, c["drop_pct"] - c["max_drop_pct"]) for c in checks)


def metric_effects(
    evaluator: Evaluator, state: QuantizeState, float_result: dict, top_k: int, work: Path, progress
) -> list[dict]:
    """Quantize each of the top_k most sensitive nodes alone and measure every metric."""
    chosen = state.ranking[:top_k]
    bar = progress(
        total=len(chosen) * sum(p.steps for p in evaluator.prepared), desc=f"metric cost of {len(chosen)} nodes"
    )
    effects = []
    for i, node in enumerate(chosen):
        path = state.quantize(work / f"alone-{i}.onnx", only=[node])
        handle = ModelHandle(kind="onnx", produced_by=f"alone-{i}", torch=evaluator.reference_model, onnx_path=path)
        result = evaluator.measure(handle, bar, latency=False)
        effects.append(
            {
                "node": node,
                "metrics": {m: v["value"] for m, v in result["metrics"].items()},
                "drop_pct": result["drop_pct"],
                "drop_ci95": result["drop_ci95"],
                # What quantizing this node alone adds to the float model's own drop (export, fusion).
                "added_drop_pct": {m: d - float_result["drop_pct"].get(m, 0.0) for m, d in result["drop_pct"].items()},
            }
        )
        for f in model_files(path):
            f.unlink(missing_ok=True)
    bar.close()
    return effects


def fallback_search(
    evaluator: Evaluator, state: QuantizeState, plain: dict, config: FallbackConfig, work: Path, progress
) -> dict:
    """Find the fewest float nodes that meet the budgets; returns the trials and the best model found."""
    ranking = state.ranking
    start = time.perf_counter()
    plain_checks = evaluator.budget_checks(plain, "quantize")
    trials: list[dict] = []
    best = {"float_nodes": 0, "checks": plain_checks, "result": plain, "path": None}
    if not ranking:
        reason = "no sensitivity ranking: set quantize.sensitivity.tokens above 0"
        return _summary(trials, best, reason, start, config.to)
    bar = progress(
        total=config.max_trials * evaluator.steps_per_model, desc=f"fallback (up to {config.max_trials} trials)"
    )

    def trial(count: int) -> bool:
        nonlocal best
        t0 = time.perf_counter()
        keep = ranking[:count]
        target = work / f"fallback-{count}" / "model.onnx"
        if config.to == "weight_only":
            path = state.quantize(target, weight_only=keep)
        else:
            path = state.quantize(target, keep_float=keep)
        handle = ModelHandle(kind="onnx", produced_by="fallback", torch=evaluator.reference_model, onnx_path=path)
        result = evaluator.measure(handle, bar)
        checks = evaluator.budget_checks(result, "fallback")
        passed = all(c["passed"] for c in checks)
        trials.append(
            {
                "float_nodes": count,
                "metrics": {m: v["value"] for m, v in result["metrics"].items()},
                "drop_pct": result["drop_pct"],
                "size_bytes": result["size_bytes"],
                "latency_ms": result["latency"]["median_ms"],
                "passed": passed,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        # Best: the smallest overshoot; among models within budget, the one with the fewest float nodes.
        # Only the best model's files stay on disk.
        if (overshoot(checks), count) < (overshoot(best["checks"]), best["float_nodes"]):
            loser = best["path"]
            best = {"float_nodes": count, "checks": checks, "result": result, "path": path}
        else:
            loser = path
        for f in model_files(loser) if loser is not None else []:
            f.unlink(missing_ok=True)
        return passed

    failing, passing = 0, None  # the plain model (no float nodes) missed the budget
    count = min(config.first_step, len(ranking))
    reason = "trial limit reached"
    while len(trials) < config.max_trials:
        elapsed = time.perf_counter() - start
        last = trials[-1]["seconds"] if trials else 0.0
        if elapsed + last > config.max_minutes * 60:
            reason = "time limit reached"
            break
        if trial(count):
            passing = count
        else:
            failing = count
        if passing is None:
            if count == len(ranking):
                reason = "budget missed even with every ranked node in float"
                break
            count = min(count * 2, len(ranking))
        else:
            if passing - failing <= 1:
                reason = "fewest float nodes that meet the budget found"
                break
            count = (failing + passing) // 2
    bar.close()
    return _summary(trials, best, reason, start, config.to)


def _summary(trials: list[dict], best: dict, reason: str, start: float, to: str = "float") -> dict:
    return {
        "to": to,
        "trials": trials,
        "stopped": reason,
        "seconds": round(time.perf_counter() - start, 2),
        "float_nodes": best["float_nodes"],
        "within_budget": all(c["passed"] for c in best["checks"]),
        "best": best,
    }
