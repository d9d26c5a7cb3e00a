"""smooth: activation smoothing (the SmoothQuant idea) on the PyTorch model, before export.

A few input channels of a language model's linear layers carry activations far larger than the rest;
one per-tensor INT8 scale then spends its 256 levels on them and rounds the other channels to a few
levels. For a group of linears reading the same activation X, channel j gets a factor

    s_j = max|X_j| ** alpha / max|W[:, j]| ** (1 - alpha)

X is divided by s where it is produced (the RMSNorm weight before q/k/v and before the MLP; the rows
of the up projection before the down projection, since the down projection reads act(gate) * up), and
the columns of each reading linear's W are multiplied by s. In exact arithmetic the model computes the
same function; the stage checks that on calibration text, in float32, and records the difference.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from glmopt.calibrate.dataset import CalibrationSet, stage_calibration
from glmopt.errors import StageError
from glmopt.models import LoadedModel
from glmopt.schema import StrictModel
from glmopt.stages.base import ModelHandle, StageContext, StageResult

Target = Literal["attention_in", "mlp_in", "mlp_out"]


class SmoothConfig(StrictModel):
    stage: Literal["smooth"] = "smooth"
    alpha: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="migration strength: 0 leaves activations as they are, 1 moves all of their range into the weights",
    )
    targets: list[Target] = Field(
        ["attention_in", "mlp_in", "mlp_out"],
        min_length=1,
        description="which activations to smooth: the q/k/v input, the MLP input, the down projection's input",
    )
    calibration: str | CalibrationSet = Field(description="calibration set file or inline definition")
    atol: float = Field(1e-3, ge=0, le=10, description="absolute tolerance of |smoothed - original| logits")
    rtol: float = Field(1e-3, ge=0, le=1, description="relative tolerance, as in numpy.allclose")


@dataclass
class SmoothGroup:
    """Linears that read one activation, and how to divide that activation by s where it is produced."""

    name: str
    target: Target
    readers: list  # nn.Linear modules whose input is the activation
    divide_source: Callable  # divide_source(s): X -> X / s, folded into the producing weights


def _divide_norm(norm) -> Callable:
    def divide(s):
        norm.weight.data.div_(s.to(norm.weight.dtype))
        if getattr(norm, "bias", None) is not None:
            norm.bias.data.div_(s.to(norm.bias.dtype))

    return divide


def _divide_rows(linear, start: int, stop: int) -> Callable:
    def divide(s):
        linear.weight.data[start:stop].div_(s.to(linear.weight.dtype)[:, None])
        if linear.bias is not None:
            linear.bias.data[start:stop].div_(s.to(linear.bias.dtype))

    return divide


def smoothing_groups(loaded: LoadedModel, targets: list[str]) -> list[SmoothGroup]:
    """The smoothable activations of a Llama-style decoder (glm, glm4, llama), layer by layer."""
    if not loaded.arch.is_decoder or loaded.arch.attention_blocks is None:
        raise StageError("smooth", f"smoothing supports decoders (glm, glm4, llama), not '{loaded.arch.model_type}'")
    model = loaded.model
    attention = loaded.arch.attention_blocks(model)
    mlps = loaded.arch.mlp_blocks(model)
    groups = []
    for i, layer in enumerate(model.model.layers):
        att, mlp = attention[i], mlps[i]
        if "attention_in" in targets:
            groups.append(
                SmoothGroup(
                    f"layers.{i}.attention_in",
                    "attention_in",
                    [att.q, att.k, att.v],
                    _divide_norm(layer.input_layernorm),
                )
            )
        if "mlp_in" in targets:
            readers = [linear for linear, _ in mlp.inputs]
            groups.append(
                SmoothGroup(f"layers.{i}.mlp_in", "mlp_in", readers, _divide_norm(layer.post_attention_layernorm))
            )
        if "mlp_out" in targets:
            # The up projection is the last chunk of the last input (GLM's gate_up_proj: [gate; up];
            # Llama: up_proj); the down projection reads act(gate) * up, linear in up.
            up, chunks = mlp.inputs[-1]
            width = up.out_features // chunks
            groups.append(
                SmoothGroup(
                    f"layers.{i}.mlp_out",
                    "mlp_out",
                    [mlp.output],
                    _divide_rows(up, up.out_features - width, up.out_features),
                )
            )
    return groups


def activation_maxima(loaded: LoadedModel, batches: list[dict], groups: list[SmoothGroup], on_batch) -> dict:
    """max |X_j| per input channel of each group, over the real (unpadded) calibration tokens."""
    import torch

    maxima = {g.name: torch.zeros(g.readers[0].in_features, dtype=torch.float32) for g in groups}
    mask_holder: dict = {}

    def hook_for(name):
        def record(module, args):
            x = args[0].detach().float()
            mask = mask_holder.get("mask")
            rows = x[mask] if mask is not None and mask.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
            if rows.numel():
                torch.maximum(maxima[name], rows.abs().amax(dim=0), out=maxima[name])

        return record

    hooks = [g.readers[0].register_forward_pre_hook(hook_for(g.name)) for g in groups]
    try:
        with torch.inference_mode():
            for feeds in batches:
                mask_holder["mask"] = torch.from_numpy(feeds["attention_mask"]).bool()
                loaded.model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
                on_batch()
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def smoothing_factors(x_max, readers, alpha: float):
    import torch

    w_max = torch.stack([r.weight.detach().abs().amax(dim=0).float() for r in readers]).amax(dim=0)
    s = x_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1.0 - alpha)
    # A channel never seen active (or a dead weight column) keeps s = 1 rather than an extreme factor.
    s = torch.where((x_max > 0) & (w_max > 0), s, torch.ones_like(s))
    return s.clamp(1e-4, 1e4)


def apply_smoothing(groups: list[SmoothGroup], maxima: dict, alpha: float) -> dict[str, dict]:
    """Fold the factors into the weights; returns per-group outlier ratios before and after."""
    import torch

    stats = {}
    with torch.no_grad():
        for group in groups:
            x_max = maxima[group.name]
            s = smoothing_factors(x_max, group.readers, alpha)
            group.divide_source(s)
            for reader in group.readers:
                reader.weight.data.mul_(s.to(reader.weight.dtype)[None, :])
            stats[group.name] = {"before": _outlier_ratio(x_max), "after": _outlier_ratio(x_max / s)}
    return stats


def _outlier_ratio(channel_max) -> float:
    """Largest channel maximum over the median channel maximum: how much one per-tensor scale wastes."""
    median = float(channel_max.median())
    return float(channel_max.max()) / median if median > 0 else float("inf")


def run(config: SmoothConfig, ctx: StageContext, model: ModelHandle) -> StageResult:
    import torch

    source = model.loaded
    smoothing_groups(source, config.targets)  # fails early (an encoder) before any calibration work
    batches, cal_info = stage_calibration(
        config.calibration, ctx.base_dir, ctx.location, "smooth", source.tokenizer, source.arch.input_names
    )
    smoothed = LoadedModel(copy.deepcopy(source.model), source.tokenizer, source.arch, source.folder)
    groups = smoothing_groups(smoothed, config.targets)
    bar = ctx.progress(total=len(batches) + 1, desc="smooth")
    maxima = activation_maxima(smoothed, batches, groups, lambda: bar.update(1))
    stats = apply_smoothing(groups, maxima, config.alpha)

    # The smoothed model must compute what the original did (up to float rounding).
    check = {k: torch.from_numpy(v[:2]) for k, v in batches[0].items()}
    with torch.inference_mode():
        expected = source.model(**check).logits.float().numpy()
        got = smoothed.model(**check).logits.float().numpy()
    mask = check["attention_mask"].numpy().astype(bool)
    diff = np.abs(got - expected)[mask]
    allowed = config.atol + config.rtol * np.abs(expected)[mask]
    worst = float(diff.max())
    bar.update(1)
    bar.close()
    if not np.isfinite(worst) or (diff > allowed).any():
        raise StageError(
            "smooth",
            f"the smoothed model's logits differ from the original's by up to {worst:.3g} "
            f"(atol {config.atol:g}, rtol {config.rtol:g}); try a smaller alpha",
        )
    by_target = {}
    for target in config.targets:
        rows = [v for name, v in stats.items() if name.endswith(target)]
        by_target[target] = {
            "groups": len(rows),
            "outlier_ratio_before_median": float(np.median([r["before"] for r in rows])),
            "outlier_ratio_after_median": float(np.median([r["after"] for r in rows])),
        }
    details = {
        "alpha": config.alpha,
        "targets": list(config.targets),
        "groups": len(groups),
        "outlier_ratio": by_target,
        "max_abs_diff": worst,
        "calibration": cal_info,
    }
    return StageResult(ModelHandle(kind="torch", produced_by="smooth", torch=smoothed), details)
