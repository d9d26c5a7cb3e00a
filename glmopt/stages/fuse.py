"""fuse: transformer graph fusions (attention, normalization, activations) for ONNX Runtime, checked numerically."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from glmopt.errors import StageError
from glmopt.onnx_utils import make_session, run_session, save_model
from glmopt.schema import StrictModel
from glmopt.stages.base import ModelHandle, StageContext, StageResult
from glmopt.stages.export import check_numerics, dummy_inputs

Backend = Literal["auto", "onnxruntime", "onnxscript", "none"]

# Which fuser `auto` picks per model type, from bench/fusion.py (see docs/decisions/0002-fusion-backend.md).
AUTO_BACKEND: dict[str, str] = {"glm": "onnxscript", "glm4": "onnxscript", "llama": "onnxscript", "bert": "onnxscript"}
# onnxruntime.transformers.optimizer's model_type for each architecture.
ORT_MODEL_TYPE: dict[str, str] = {"glm": "gpt2", "glm4": "gpt2", "llama": "gpt2", "bert": "bert"}


class FuseConfig(StrictModel):
    stage: Literal["fuse"] = "fuse"
    backend: Backend = Field("auto", description="fusion engine; auto picks the faster one measured for the model type")
    atol: float = Field(1e-3, ge=0, le=10, description="absolute tolerance of |fused - exported| on the check inputs")
    rtol: float = Field(1e-3, ge=0, le=1, description="relative tolerance, as in numpy.allclose")


def _fuse_onnxruntime(src: Path, dst: Path, model_type: str, config) -> dict[str, int]:
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    optimized = optimize_model(
        str(src),
        model_type=ORT_MODEL_TYPE[model_type],
        num_heads=config.num_attention_heads,
        hidden_size=config.num_attention_heads * head_dim,
        opt_level=0,  # graph fusions only; ONNX Runtime applies its own runtime optimizations at load
    )
    save_model(optimized.model, dst)
    return {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}


def _fuse_onnxscript(src: Path, dst: Path) -> dict[str, int]:
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(src))
    model, counts = optimize_for_ort(model)
    proto = ir.serde.serialize_model(model)
    save_model(proto, dst)
    return {k: int(v) for k, v in counts.items() if v}


def fuse_model(src: Path, dst: Path, backend: str, model_type: str, config) -> dict[str, int]:
    with contextlib.redirect_stdout(sys.stderr):
        if backend == "onnxruntime":
            return _fuse_onnxruntime(src, dst, model_type, config)
        return _fuse_onnxscript(src, dst)


def run(config: FuseConfig, ctx: StageContext, model: ModelHandle) -> StageResult:
    import onnx

    assert model.onnx_path is not None
    loaded = model.loaded
    backend = AUTO_BACKEND[loaded.arch.model_type] if config.backend == "auto" else config.backend
    out = ctx.work_dir / "model.onnx"
    bar = ctx.progress(total=2, desc=f"fuse ({backend})")
    before = len(onnx.load(str(model.onnx_path), load_external_data=False).graph.node)
    if backend == "none":
        fusions: dict[str, int] = {}
        out = model.onnx_path
    else:
        try:
            fusions = fuse_model(model.onnx_path, out, backend, loaded.arch.model_type, loaded.model.config)
        except Exception as exc:
            raise StageError("fuse", f"{backend} fusion failed: {str(exc).splitlines()[0]}") from None
    bar.update(1)
    feeds = dummy_inputs(loaded, 3, 37, seed=ctx.seed + 1)
    expected = run_session(make_session(model.onnx_path, ctx.providers), feeds)[0]
    diff = check_numerics("fuse", out, expected, feeds, config.atol, config.rtol, ctx.providers)
    bar.update(1)
    bar.close()
    after = len(onnx.load(str(out), load_external_data=False).graph.node)
    details = {
        "backend": backend,
        "fusions": fusions,
        "nodes_before": before,
        "nodes_after": after,
        "max_abs_diff": float(np.float64(diff)),
    }
    return StageResult(ModelHandle(kind="onnx", produced_by="fuse", onnx_path=out, torch=loaded), details)
