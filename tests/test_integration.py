"""Integration: the ready recipes on the real models (SmolLM2-135M as GLM, all-MiniLM-L6-v2), real text.

These take minutes each; `make test-fast` skips them.
"""

from __future__ import annotations

import json

import pytest
from conftest import REPO
from typer.testing import CliRunner

from glmopt.cli import app

pytestmark = pytest.mark.integration
runner = CliRunner()


def build(recipe: str, artifacts):
    result = runner.invoke(app, ["build", str(REPO / recipe), "--artifacts-dir", str(artifacts), "--json", "-q"])
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return result.exit_code, out, result


def test_demo_recipe_int8_glm(tmp_path):
    code, out, result = build("recipes/int8.yaml", tmp_path)
    assert code == 0, result.output
    artifact = tmp_path / "smollm2-glm-int8" / "1"
    report = json.loads((artifact / "report.json").read_text())
    models = report["evaluation"]["models"]
    fp32 = models["export"]["size_bytes"]
    assert models["quantize"]["size_bytes"] <= 0.35 * fp32
    assert models["quantize"]["drop_pct"]["perplexity"] < 3.0  # the recipe's budget (goal: 2%)
    ref = models["reference"]["metrics"]["perplexity"]["value"]
    assert 15 < ref < 60  # real weights on real news text, not a random model
    assert models["fuse"]["metrics"]["perplexity"]["value"] == pytest.approx(ref, rel=2e-3)
    # Entropy ranges are really searched: many are narrower than MinMax.
    ranges = json.loads((artifact / "calibration_ranges.json").read_text())["tensors"]
    entropy = [t for t in ranges.values() if t["method"] == "entropy"]
    assert sum(t["range"] != t["minmax"] for t in entropy) > len(entropy) // 2
    fusions = next(s for s in report["stages"] if s["name"] == "fuse")["details"]["fusions"]
    assert sum(fusions.values()) > 0
    assert out["metrics"]["drop_pct"]["perplexity"] == pytest.approx(models["quantize"]["drop_pct"]["perplexity"])
    # Smoothing flattened the outlier channels and changed nothing in float.
    smooth = next(s for s in report["stages"] if s["name"] == "smooth")["details"]
    for ratio in smooth["outlier_ratio"].values():
        assert ratio["outlier_ratio_after_median"] < ratio["outlier_ratio_before_median"] / 2
    assert models["smooth"]["metrics"]["perplexity"]["value"] == pytest.approx(ref, rel=1e-3)
    # Sensitivity on real activations: with the down projections weight-only (their inputs keep the
    # outliers), the attention output projections and the LM head are the least faithful static nodes.
    sensitivity = report["sensitivity"]
    quantize = next(s for s in report["stages"] if s["name"] == "quantize")["details"]
    assert len(quantize["weight_only"]["nodes"]) == 30 and quantize["weight_only"]["bits"] == 8
    assert len(sensitivity["nodes"]) == quantize["quantized_nodes"]
    worst = [n["node"] for n in sensitivity["nodes"][:10]]
    assert not any("down_proj" in n for n in worst)
    assert sum("o_proj" in n or "lm_head" in n for n in worst) >= 6, worst
    assert len(sensitivity["histograms"]) == 4
    html = (artifact / "report.html").read_text()
    assert html.count("<svg") >= 8 and "WITHIN BUDGET" in html
    check_generation(tmp_path, artifact)


def check_generation(artifacts, artifact):
    """The demo's fused FP32 model (from the stage cache) generates PyTorch's greedy tokens through a plain
    InferenceSession with its key/value cache; the INT8 artifact generates the same with and without it."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from test_generation import greedy_with_cache, greedy_without_cache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glmopt.cache import StageCache, default_cache_dir
    from glmopt.models.builtin import resolve_builtin

    folder = resolve_builtin("smollm2-glm")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = tokenizer(["The history of the city begins in"], return_tensors="np")
    ids, mask = prompt["input_ids"].astype(np.int64), prompt["attention_mask"].astype(np.int64)
    with torch.inference_mode():
        expected = model.generate(
            torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=16, do_sample=False
        )[:, ids.shape[1] :].numpy()
    cache = default_cache_dir(artifacts)
    fuse_key = next(e["key"] for e in StageCache(cache).entries() if e["stage"] == "fuse")
    fused = ort.InferenceSession(str(cache / fuse_key / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(greedy_with_cache(fused, ids, mask, 16), expected)
    int8 = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(greedy_with_cache(int8, ids, mask, 16), greedy_without_cache(int8, ids, mask, 16))


def test_minilm_recipe(tmp_path):
    code, out, result = build("recipes/int8-minilm.yaml", tmp_path)
    assert code in (0, 3), result.output
    report = json.loads((tmp_path / "minilm-int8" / "1" / "report.json").read_text())
    ref = report["evaluation"]["models"]["reference"]["metrics"]
    assert 0.4 < ref["spearman"]["value"] < 0.7  # published: about 0.51 (Spearman) for this model
    assert ref["accuracy"]["value"] > 0.9
    models = report["evaluation"]["models"]
    assert models["quantize"]["size_bytes"] <= 0.35 * models["export"]["size_bytes"]


def test_prune_recipe_shrinks_the_model(tmp_path):
    """The prune stage of recipes/prune-int8.yaml as written, then export and a short evaluation.

    Fusion and INT8 are what the demo test covers; leaving them out (and ranking on 32 windows rather than
    64) keeps the suite's time down.
    """
    import yaml

    recipe = yaml.safe_load((REPO / "recipes" / "prune-int8.yaml").read_text())
    prune = recipe["stages"][0]
    prune["calibration"] = str(REPO / "calibration" / "wikipedia-32x256.yaml")  # half the ranking pass
    evaluate = recipe["stages"][-1]
    evaluate["tasks"][0]["max_tokens"] = 1024
    evaluate["latency"]["runs"] = 1
    recipe["stages"] = [prune, {"stage": "export"}, evaluate]
    (tmp_path / "prune.yaml").write_text(yaml.safe_dump(recipe))
    result = runner.invoke(
        app, ["build", str(tmp_path / "prune.yaml"), "--artifacts-dir", str(tmp_path), "--json", "-q"]
    )
    code = result.exit_code
    assert code in (0, 3), result.output
    report = json.loads((tmp_path / "smollm2-glm-prune-int8" / "1" / "report.json").read_text())
    prune = next(s for s in report["stages"] if s["name"] == "prune")["details"]
    assert prune["parameters_after"] < prune["parameters_before"]
    assert prune["intermediate_size"] == 1344
    config = json.loads((tmp_path / "smollm2-glm-prune-int8" / "1" / "config.json").read_text())
    assert config["intermediate_size"] == 1344


def test_entropy_thresholds_match_onnxruntime_on_minilm_activations(tmp_path):
    """Same histograms of a real model's activations, same 2048 bins: our KL search vs ONNX Runtime's."""
    import numpy as np
    import onnx
    from onnxruntime.quantization.calibrate import HistogramCollector

    from glmopt.calibrate.collect import activation_inputs, collect_histograms, select_nodes
    from glmopt.calibrate.dataset import calibration_batches, load_calibration_file
    from glmopt.calibrate.histogram import entropy_range
    from glmopt.models import load_model
    from glmopt.models.builtin import resolve_builtin
    from glmopt.pipeline import progress_factory
    from glmopt.stages.base import ModelHandle, StageContext
    from glmopt.stages.export import ExportConfig
    from glmopt.stages.export import run as export

    loaded = load_model(resolve_builtin("all-minilm-l6-v2"))
    ctx = StageContext(tmp_path, tmp_path, loaded, [], ["CPUExecutionProvider"], 0, progress_factory(False))
    path = export(ExportConfig(), ctx, ModelHandle("torch", "reference", torch=loaded)).model.onnx_path
    cal = load_calibration_file(REPO / "calibration" / "wikipedia-docs-128.yaml").model_copy(update={"num_samples": 24})
    batches, _ = calibration_batches(cal, loaded.tokenizer, loaded.arch.input_names, REPO, "test")
    proto = onnx.load(str(path), load_external_data=False)
    tensors = activation_inputs(proto, select_nodes(proto, ["MatMul", "Gather"], None, [], True))
    hists = collect_histograms(path, tensors, batches, 2048, ["CPUExecutionProvider"], tmp_path)
    collector = HistogramCollector("entropy", False, 2048, 128, None, None)
    exact, close = 0, 0
    for hist in hists.values():
        width = 2 * hist.half_range / hist.num_bins
        ours = entropy_range(hist)
        lo, hi = collector.get_entropy_threshold(
            (hist.counts, hist.edges.astype(np.float32), np.float32(hist.minimum), np.float32(hist.maximum)), 128
        )
        exact += ours == (pytest.approx(float(lo)), pytest.approx(float(hi)))
        close += abs(ours[0] - float(lo)) <= 4 * width and abs(ours[1] - float(hi)) <= 4 * width
    assert len(hists) == 24  # 6 layers x inputs of: q/k/v, attention output, MLP up, MLP down
    assert exact >= 0.8 * len(hists)  # identical thresholds for most tensors
    assert close == len(hists)  # and every threshold within a few bins (flat KL minima may tie differently)
