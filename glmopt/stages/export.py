"""export: PyTorch model -> FP32 ONNX (dynamo exporter), checked against PyTorch on an unseen shape."""

from __future__ import annotations

import ast
import contextlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from glmopt.errors import StageError
from glmopt.models import LoadedModel
from glmopt.onnx_utils import EXTERNAL_DATA_THRESHOLD, make_session, model_size, needs_external_data, run_session
from glmopt.schema import StrictModel
from glmopt.stages.base import ModelHandle, StageContext, StageResult


class ExportConfig(StrictModel):
    stage: Literal["export"] = "export"
    opset: int = Field(20, ge=18, le=23, description="ONNX opset of the exported graph")
    sample_shape: tuple[int, int] = Field((2, 16), description="(batch, sequence) traced by the exporter")
    check_shape: tuple[int, int] = Field((3, 37), description="(batch, sequence) of the numerics check")
    atol: float = Field(1e-3, ge=0, le=10, description="absolute tolerance of |ONNX - PyTorch| on the check inputs")
    rtol: float = Field(1e-3, ge=0, le=1, description="relative tolerance, as in numpy.allclose")

    @model_validator(mode="after")
    def _shapes(self) -> ExportConfig:
        if min(self.sample_shape) < 1 or min(self.check_shape) < 1:
            raise ValueError("shapes must be positive")
        if self.sample_shape[1] < 2:
            raise ValueError("sample_shape sequence must be at least 2, or the exporter fixes that axis")
        if self.check_shape == self.sample_shape:
            raise ValueError("check_shape must differ from sample_shape, so that dynamic axes are really checked")
        return self


def dummy_inputs(
    loaded: LoadedModel, batch: int, seq: int, seed: int = 0, pad_last: bool = True
) -> dict[str, np.ndarray]:
    """Inputs in the exported graph's names; the last row is right-padded to exercise the mask."""
    rng = np.random.default_rng(seed)
    vocab = int(loaded.model.config.vocab_size)
    ids = rng.integers(low=min(10, vocab - 1), high=vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    if pad_last and batch > 1 and seq > 4:
        mask[-1, seq - seq // 4 :] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    names = loaded.arch.input_names
    if "position_ids" in names:
        feeds["position_ids"] = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros((batch, seq), dtype=np.int64)
    return feeds


def export_wrapper(loaded: LoadedModel):
    """A module whose forward takes the graph inputs in order and returns its single output tensor."""
    import torch

    class Decoder(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask, position_ids):
            return self.net(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits

    class Encoder(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.net(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    return (Decoder if loaded.arch.is_decoder else Encoder)(loaded.model).eval()


def torch_outputs(loaded: LoadedModel, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    wrapper = export_wrapper(loaded)
    with torch.inference_mode():
        args = [torch.from_numpy(feeds[n]) for n in loaded.arch.input_names]
        return wrapper(*args).float().numpy()


def name_nodes_by_module(model) -> None:
    """Rename nodes after the PyTorch module that produced them (e.g. `model.layers.3.mlp.down_proj/MatMul`).

    The exporter's own names (`node_linear_17`) mean nothing to a person writing an exclusion list.
    """
    seen: dict[str, int] = {}
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if not scopes:
            continue
        try:
            parts = [s for s in ast.literal_eval(scopes) if s]
        except (ValueError, SyntaxError):
            continue
        modules = [s.removeprefix("net.") for s in parts[:-1] if s != "net"]
        base = f"{modules[-1]}/{node.op_type}" if modules else f"{node.op_type}"
        count = seen.get(base, 0)
        seen[base] = count + 1
        node.name = base if count == 0 else f"{base}_{count}"


def fold_constants(src: Path, dst: Path) -> None:
    """ONNX Runtime's basic (ONNX-standard) optimizations: constant folding, e.g. of transposed weights."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    if model_size(src) > EXTERNAL_DATA_THRESHOLD:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def check_numerics(
    stage: str,
    path: Path,
    expected: np.ndarray,
    feeds: dict[str, np.ndarray],
    atol: float,
    rtol: float,
    providers: list[str],
) -> float:
    """Fail the stage unless |got - expected| <= atol + rtol * |expected| everywhere; returns max |difference|."""
    session = make_session(path, providers)
    got = run_session(session, feeds)[0]
    if got.shape != expected.shape:
        raise StageError(stage, f"output shape {got.shape} differs from the reference's {expected.shape}")
    mask = feeds["attention_mask"].astype(bool)
    # Padded positions carry no meaning and may legitimately differ; compare real tokens only.
    diff = np.abs(got - expected)[mask]
    allowed = atol + rtol * np.abs(expected)[mask]
    worst = float(diff.max())
    if not np.isfinite(worst) or (diff > allowed).any():
        i = int(np.argmax(diff - allowed))
        raise StageError(
            stage,
            f"|difference| {float(diff.flat[i]):.3g} exceeds atol {atol:g} + rtol {rtol:g} x |reference| "
            f"{float(np.abs(expected)[mask].flat[i]):.3g} on inputs of shape {mask.shape} (max {worst:.3g})",
        )
    return worst


def run(config: ExportConfig, ctx: StageContext, model: ModelHandle) -> StageResult:
    import onnx
    import torch

    loaded = model.loaded
    arch = loaded.arch
    wrapper = export_wrapper(loaded)
    sample = dummy_inputs(loaded, *config.sample_shape, seed=ctx.seed, pad_last=False)
    args = tuple(torch.from_numpy(sample[n]) for n in arch.input_names)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = {name: {0: batch, 1: sequence} for name in arch.input_names}

    raw = ctx.work_dir / "exported.onnx"
    out = ctx.work_dir / "model.onnx"
    bar = ctx.progress(total=3, desc="export")
    # The exporter prints its progress to stdout, which belongs to --json; send it to stderr.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # optimize=False: the exporter's own optimizer took minutes on a 135M model; ONNX Runtime's
            # constant folding below does what later stages need in seconds.
            program = torch.onnx.export(
                wrapper,
                args,
                dynamo=True,
                opset_version=config.opset,
                input_names=list(arch.input_names),
                output_names=list(arch.output_names),
                dynamic_shapes=dynamic,
                optimize=False,
                verbose=False,
            )
        except Exception as exc:
            raise StageError("export", f"torch.onnx.export failed: {str(exc).splitlines()[0]}") from None
    bar.update(1)
    proto = program.model_proto
    name_nodes_by_module(proto)
    external = needs_external_data(proto)
    onnx.save_model(proto, str(raw), save_as_external_data=external, location=raw.name + ".data")
    del program, proto
    fold_constants(raw, out)
    for f in ctx.work_dir.glob("exported.onnx*"):
        f.unlink()
    bar.update(1)

    feeds = dummy_inputs(loaded, *config.check_shape, seed=ctx.seed + 1)
    expected = torch_outputs(loaded, feeds)
    diff = check_numerics("export", out, expected, feeds, config.atol, config.rtol, ctx.providers)
    bar.update(1)
    bar.close()
    graph = onnx.load(str(out), load_external_data=False).graph
    details = {
        "opset": config.opset,
        "inputs": list(arch.input_names),
        "outputs": list(arch.output_names),
        "nodes": len(graph.node),
        "max_abs_diff": diff,
        "check_shape": list(config.check_shape),
    }
    return StageResult(ModelHandle(kind="onnx", produced_by="export", onnx_path=out, torch=loaded), details)
