"""Smoothing strength x quantize settings on the demo model: perplexity of each INT8 model, one run.

For each alpha (a negative alpha means no smooth stage) the demo model is smoothed with glmopt's smooth
stage, exported once, then quantized with each variant (quantize stage settings as JSON) and scored on
4096 tokens of news text (window 512), the evaluation of recipes/int8.yaml. Export without the key/value
cache and without fusion, to keep the sweep short; both leave the arithmetic the same.

    python bench/smoothing_sweep.py --alphas -1 0.5 0.8 0.9 1.0 [--variants variants.json] [--targets ...]

Without --variants: the demo recipe's quantize settings as a plain static model, the same with the down
projections weight-only, and `method: auto`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, table

MIXED_METHODS = {
    "method": "entropy",
    "method_overrides": {
        "*q_proj/MatMul": "minmax",
        "*k_proj/MatMul": "minmax",
        "*v_proj/MatMul": "minmax",
        "*gate_up_proj/MatMul": "minmax",
        "*down_proj/MatMul": "minmax",
    },
}
DEFAULT_VARIANTS = [
    {"name": "entropy+minmax", **MIXED_METHODS},
    {"name": "entropy+minmax, down weight-only", **MIXED_METHODS, "weight_only_nodes": ["*down_proj*"]},
    {"name": "minmax", "method": "minmax"},
    {"name": "auto", "method": "auto"},
]
CALIBRATION = "../calibration/wikipedia-32x256.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alphas", nargs="+", type=float, default=[-1.0, 0.5, 0.8, 0.9, 1.0])
    parser.add_argument("--targets", nargs="+", default=["attention_in", "mlp_in", "mlp_out"])
    parser.add_argument("--variants", type=Path, help="JSON list of quantize settings, each with a 'name'")
    args = parser.parse_args()
    variants = json.loads(args.variants.read_text()) if args.variants else DEFAULT_VARIANTS

    from glmopt.models import load_model
    from glmopt.models.builtin import resolve_builtin
    from glmopt.pipeline import progress_factory
    from glmopt.stages import evaluate, export, quantize, smooth
    from glmopt.stages.base import ModelHandle, StageContext

    loaded = load_model(resolve_builtin("smollm2-glm"))
    work = Path(tempfile.mkdtemp(prefix="glmopt-sweep-"))

    def context(name: str, model) -> StageContext:
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        return StageContext(
            folder, REPO_ROOT / "recipes", model, [], ["CPUExecutionProvider"], 0, progress_factory(False)
        )

    evaluation = evaluate.EvaluateConfig(
        tasks=[{"metric": "perplexity", "data": {"builtin": "lee-news"}, "window": 512, "max_tokens": 4096}]
    )
    evaluator = evaluate.Evaluator(evaluation, context("evaluate", loaded))
    no_bar = progress_factory(False)(total=0, desc="")
    reference = evaluator.measure(ModelHandle("torch", "reference", torch=loaded), no_bar, latency=False)
    fp32 = reference["metrics"]["perplexity"]["value"]
    rows = [{"alpha": "-", "variant": "FP32 (PyTorch)", "perplexity": fp32, "change %": 0.0}]
    try:
        for alpha in args.alphas:
            handle = ModelHandle("torch", "reference", torch=loaded)
            smooth_s = 0.0
            if alpha >= 0:
                start = time.perf_counter()
                config = smooth.SmoothConfig(alpha=alpha, targets=args.targets, calibration=CALIBRATION)
                handle = smooth.run(config, context(f"smooth-{alpha}", loaded), handle).model
                smooth_s = time.perf_counter() - start
            exported = export.run(
                export.ExportConfig(kv_cache=False), context(f"export-{alpha}", handle.loaded), handle
            ).model
            for i, variant in enumerate(variants):
                settings = {k: v for k, v in variant.items() if k != "name"}
                config = quantize.QuantizeConfig(calibration=CALIBRATION, sensitivity={"tokens": 0}, **settings)
                start = time.perf_counter()
                quantized = quantize.run(config, context(f"q-{alpha}-{i}", handle.loaded), exported).model
                seconds = time.perf_counter() - start
                result = evaluator.measure(quantized, no_bar, latency=False)
                value = result["metrics"]["perplexity"]["value"]
                rows.append(
                    {
                        "alpha": "none" if alpha < 0 else alpha,
                        "variant": variant["name"],
                        "perplexity": value,
                        "change %": (value - fp32) / fp32 * 100,
                        "size MB": result["size_bytes"] / 1e6,
                        "quantize s": seconds,
                        "smooth s": smooth_s,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print(table(keys, [[r.get(k, "") for k in keys] for r in rows]))
    print(f"smoothing targets: {', '.join(args.targets)}; change % is against the FP32 PyTorch model")


if __name__ == "__main__":
    main()
