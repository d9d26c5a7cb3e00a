"""INT8 quality and speed: glmopt's ready recipe against ONNX Runtime's stock quantizers, side by side.

For each model, one run:
  - fp32:            the FP32 graph glmopt exports and fuses (taken from the recipe build's stage cache)
  - ort-dynamic:     onnxruntime.quantization.quantize_dynamic on that graph (MatMul, stock defaults)
  - ort-static-minmax: quantize_static on that graph, QDQ, MatMul only, MinMax calibration over the
                     same calibration windows the recipe uses (stock defaults otherwise: per-tensor weights)
  - glmopt ...:      the artifact of `glmopt build RECIPE` for each ready recipe of the model (built here,
                     from scratch, each in its own process and artifacts folder)
The FP32 graph and the stock quantizers' input come from a recipe without a smooth stage, so that the
stock tools quantize the model as exported, not glmopt's smoothed one.
Every model is scored on the same data with glmopt's evaluator (perplexity on 8192 tokens of news text
for the GLM; Lee Spearman and BBC probe accuracy for MiniLM) and timed with ONNX Runtime at 2 threads
(median of --runs calls after 2 warm-up calls) at batch x sequence 1x128 and 4x512.

    python bench/int8_quality.py [--models smollm2-glm all-minilm-l6-v2] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, latency_ms, run_build, table

RECIPES = {
    "smollm2-glm": ["recipes/weight-only-int4.yaml", "recipes/int8.yaml"],
    "all-minilm-l6-v2": ["recipes/int8-minilm.yaml"],
}
SHAPES = [(1, 128), (4, 512)]


def fused_fp32(artifacts: Path) -> Path:
    from glmopt.cache import StageCache, default_cache_dir

    cache = default_cache_dir(artifacts)
    key = next(e["key"] for e in StageCache(cache).entries() if e["stage"] == "fuse")
    return cache / key / "model.onnx"


def recipe_parts(recipe_path: Path):
    from glmopt.recipe import load_recipe

    recipe = load_recipe(recipe_path).recipe
    return recipe.stages, next(s for s in recipe.stages if s.stage == "evaluate")


def stock_dynamic(src: Path, dst: Path) -> float:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    start = time.perf_counter()
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    return time.perf_counter() - start


def stock_static_minmax(src: Path, dst: Path, batches: list[dict]) -> float:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    from glmopt.onnx_utils import complete_feeds, make_session

    session = make_session(src, ["CPUExecutionProvider"])
    feeds = [complete_feeds(session, b) for b in batches]  # the graph's own inputs, cache included
    del session

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    start = time.perf_counter()
    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        calibrate_method=CalibrationMethod.MinMax,
    )
    return time.perf_counter() - start


def score(evaluate_config, loaded, path: Path, work: Path) -> dict[str, float]:
    from glmopt.pipeline import progress_factory
    from glmopt.stages.base import ModelHandle, StageContext
    from glmopt.stages.evaluate import Evaluator

    ctx = StageContext(work, REPO_ROOT / "recipes", loaded, [], ["CPUExecutionProvider"], 0, progress_factory(False))
    evaluator = Evaluator(evaluate_config, ctx)
    handle = ModelHandle("onnx", "bench", torch=loaded, onnx_path=path)
    result = evaluator.measure(handle, progress_factory(False)(total=0, desc=""), latency=False)
    return {m: v["value"] for m, v in result["metrics"].items()}


def bench_model(builtin: str, runs: int) -> list[dict]:
    from glmopt.calibrate.dataset import calibration_batches, resolve_calibration
    from glmopt.models import load_model
    from glmopt.models.builtin import resolve_builtin
    from glmopt.onnx_utils import model_size

    recipes = [REPO_ROOT / r for r in RECIPES[builtin]]
    builds = {}
    evaluate = None
    work = Path(tempfile.mkdtemp(prefix="glmopt-int8-bench-"))
    try:
        fp32 = calibration = None
        for recipe in recipes:
            label = f"glmopt {recipe.stem}"
            print(f"[{builtin}] glmopt build {recipe.relative_to(REPO_ROOT)} ...", file=sys.stderr, flush=True)
            artifacts = work / recipe.stem
            wall, built, peak = run_build(recipe, artifacts)
            builds[label] = (Path(built["artifact"]) / "model.onnx", wall, peak)
            stages, evaluate_config = recipe_parts(recipe)
            evaluate = evaluate or evaluate_config
            if fp32 is None and not any(s.stage == "smooth" for s in stages):
                fp32 = fused_fp32(artifacts)
            for stage in stages:
                if stage.stage == "quantize" and stage.calibration is not None and calibration is None:
                    calibration = resolve_calibration(stage.calibration, recipe.parent)
        assert fp32 is not None and calibration is not None, "a recipe without smoothing and one with calibration"
        # The yardstick for the GLM: 8192 tokens of news text (the recipes evaluate fewer).
        tasks = [t.model_copy(update={"max_tokens": 8192}) if t.metric == "perplexity" else t for t in evaluate.tasks]
        evaluate = evaluate.model_copy(update={"tasks": tasks, "budgets": {}})
        loaded = load_model(resolve_builtin(builtin))
        cal, cal_base = calibration
        batches, _ = calibration_batches(cal, loaded.tokenizer, loaded.arch.input_names, cal_base, "bench")
        candidates = {"fp32": (fp32, None, None)}
        print(f"[{builtin}] stock quantizers ...", file=sys.stderr, flush=True)
        dynamic = work / "ort-dynamic.onnx"
        candidates["ort-dynamic"] = (dynamic, stock_dynamic(fp32, dynamic), None)
        static = work / "ort-static-minmax.onnx"
        candidates["ort-static-minmax"] = (static, stock_static_minmax(fp32, static, batches), None)
        candidates.update(builds)
        rows = []
        for name, (path, seconds, peak) in candidates.items():
            print(f"[{builtin}] scoring {name} ...", file=sys.stderr, flush=True)
            row = {"model": builtin, "method": name, **score(evaluate, loaded, path, work / "scores" / name)}
            row.update({f"{b}x{s} ms": latency_ms(path, loaded, b, s, runs=runs) for b, s in SHAPES})
            row["size MB"] = model_size(path) / 1e6
            row["build s"] = seconds
            row["build peak RSS GB"] = None if peak is None else peak / 1e9
            rows.append(row)
        base = rows[0]
        for row in rows:
            for key in [k for k in base if k.endswith(" ms")]:
                row[f"speedup {key.split()[0]}"] = base[key] / row[key]
            row["size x"] = row["size MB"] / base["size MB"]
            for metric in ("perplexity", "spearman", "accuracy"):
                if metric in row:
                    row[f"{metric} change %"] = (row[metric] - base[metric]) / base[metric] * 100
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=list(RECIPES))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [row for builtin in args.models for row in bench_model(builtin, args.runs)]
    for builtin in args.models:
        mine = [r for r in rows if r["model"] == builtin]
        keys = list(dict.fromkeys(k for r in mine for k in r))
        print(table(keys, [[r.get(k, "") for k in keys] for r in mine]))
        print()
    for row in rows:
        if row["method"] == "glmopt int8":  # the goals for recipes/int8.yaml
            for label, value, goal, ok in (
                ("perplexity change %", row["perplexity change %"], "<= +2%", row["perplexity change %"] <= 2.0),
                ("speedup 4x512", row["speedup 4x512"], ">= 2x", row["speedup 4x512"] >= 2.0),
                ("size x FP32", row["size x"], "<= 0.35x", row["size x"] <= 0.35),
            ):
                print(f"goal {label} {goal}: {value:.3g} -> {'met' if ok else 'MISSED'}")
    print(
        "change % and speedup are against fp32 (glmopt's exported and fused FP32 graph); perplexity: lower is "
        "better, so a positive change is a loss; 'build s' is the stock quantizer's time, and for glmopt the "
        "whole recipe build (smooth, export, fuse, calibrate, quantize, evaluate) with its peak RSS"
    )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
