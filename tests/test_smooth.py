"""Activation smoothing: the same function in float, flatter activations, less INT8 error; as a recipe stage."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from glmopt.errors import StageError
from glmopt.models import load_model
from glmopt.pipeline import progress_factory
from glmopt.stages.base import ModelHandle, StageContext
from glmopt.stages.export import dummy_inputs, torch_outputs
from glmopt.stages.smooth import SmoothConfig, smoothing_groups
from glmopt.stages.smooth import run as smooth
from recipes import decoder_recipe, write


def with_outlier_channels(folder: Path):
    """The tiny model with a few RMSNorm channels made 40x larger: the outliers real LMs have."""
    loaded = load_model(folder)
    with torch.no_grad():
        for layer in loaded.model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[[3, 17]] *= 40.0
    return loaded


def run_smooth(loaded, calib: Path, **settings):
    work = Path(tempfile.mkdtemp())
    ctx = StageContext(work, work, loaded, [], ["CPUExecutionProvider"], 0, progress_factory(False))
    cal = {"data": {"files": [str(calib)]}, "num_samples": 8, "sequence_length": 32, "batch_size": 4}
    config = SmoothConfig(calibration=cal, **settings)
    return smooth(config, ctx, ModelHandle("torch", "reference", torch=loaded))


def int8_error(x: torch.Tensor, w: torch.Tensor) -> float:
    """Relative error of x @ w.T with x per-tensor and w per-output-channel symmetric INT8."""
    xq = torch.round(x / (x.abs().max() / 127)) * (x.abs().max() / 127)
    w_scale = w.abs().amax(dim=1, keepdim=True) / 127
    wq = torch.round(w / w_scale) * w_scale
    y = x @ w.T
    return float((xq @ wq.T - y).norm() / y.norm())


def first_q_input(loaded, feeds) -> torch.Tensor:
    seen = {}
    layer = loaded.model.model.layers[0]
    hook = layer.self_attn.q_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
    with torch.inference_mode():
        loaded.model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    hook.remove()
    return seen["x"].reshape(-1, seen["x"].shape[-1])


@pytest.mark.parametrize("kind", ["glm", "glm4", "llama"])
def test_smoothing_keeps_the_function_and_flattens_activations(kind, tiny_models, text_files):
    original = with_outlier_channels(tiny_models[kind])
    result = run_smooth(original, text_files["calib"], alpha=0.5)
    smoothed = result.model.loaded
    feeds = dummy_inputs(original, 2, 21, seed=4)
    np.testing.assert_allclose(torch_outputs(smoothed, feeds), torch_outputs(original, feeds), rtol=1e-4, atol=1e-4)
    # Weights really moved (not a copy of the original) and the source model is untouched.
    q_before = original.model.model.layers[0].self_attn.q_proj.weight
    q_after = smoothed.model.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q_before, q_after)
    ratios = result.details["outlier_ratio"]
    for target in ("attention_in", "mlp_in", "mlp_out"):
        assert ratios[target]["outlier_ratio_after_median"] < ratios[target]["outlier_ratio_before_median"]
    assert ratios["attention_in"]["outlier_ratio_before_median"] > 10  # the injected channels
    # What smoothing is for: less INT8 error in the q projection fed by the outlier channels.
    x0, x1 = first_q_input(original, feeds), first_q_input(smoothed, feeds)
    err_before = int8_error(x0, q_before.detach())
    err_after = int8_error(x1, q_after.detach())
    assert err_after < 0.5 * err_before, (err_before, err_after)


def test_alpha_zero_changes_nothing(tiny_models, text_files):
    original = load_model(tiny_models["glm"])
    result = run_smooth(original, text_files["calib"], alpha=0.0, targets=["mlp_in"])
    # alpha 0: s = 1 / max|W|, so activations take all of the weights' range; the function is the same.
    feeds = dummy_inputs(original, 1, 9)
    np.testing.assert_allclose(torch_outputs(result.model.loaded, feeds), torch_outputs(original, feeds), atol=1e-4)
    assert result.details["targets"] == ["mlp_in"] and result.details["groups"] == 2


def test_glm_fused_gate_up_scales_only_the_up_rows(tiny_models, text_files):
    original = with_outlier_channels(tiny_models["glm"])
    result = run_smooth(original, text_files["calib"], alpha=0.5, targets=["mlp_out"])
    before = original.model.model.layers[0].mlp.gate_up_proj.weight
    after = result.model.loaded.model.model.layers[0].mlp.gate_up_proj.weight
    half = before.shape[0] // 2
    assert torch.equal(before[:half], after[:half])  # gate rows untouched
    assert not torch.allclose(before[half:], after[half:])


def test_encoders_are_refused(tiny_models, text_files):
    with pytest.raises(StageError, match="smoothing supports decoders"):
        smoothing_groups(load_model(tiny_models["bert"]), ["mlp_in"])


def test_smooth_stage_in_a_build(tiny_models, text_files, tmp_path):
    from test_build import build

    recipe = decoder_recipe(tiny_models["glm"], text_files)
    calib = {"data": {"files": [str(text_files["calib"])]}, "num_samples": 8, "sequence_length": 32}
    recipe["stages"].insert(0, {"stage": "smooth", "alpha": 0.6, "calibration": calib})
    code, out, result = build(write(tmp_path / "r.yaml", recipe), tmp_path)
    assert code == 0, result.output
    import json

    report = json.loads((Path(out["artifact"]) / "report.json").read_text())
    stage = next(s for s in report["stages"] if s["name"] == "smooth")
    assert stage["details"]["alpha"] == 0.6 and stage["details"]["max_abs_diff"] < 1e-3
    models = report["evaluation"]["models"]
    # The smoothed PyTorch model is evaluated too, and matches the reference.
    assert models["smooth"]["metrics"]["perplexity"]["value"] == pytest.approx(
        models["reference"]["metrics"]["perplexity"]["value"], rel=1e-3
    )


def test_smooth_after_export_is_refused(tiny_models, text_files, tmp_path):
    from test_build import build

    recipe = decoder_recipe(tiny_models["glm"], text_files)
    recipe["stages"].insert(1, {"stage": "smooth", "calibration": {"data": {"files": [str(text_files["calib"])]}}})
    code, _, result = build(write(tmp_path / "r.yaml", recipe), tmp_path)
    assert code == 2
    assert "'smooth' cannot come after 'export'" in result.stderr
