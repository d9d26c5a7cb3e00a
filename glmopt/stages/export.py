"""export: PyTorch model -> FP32 ONNX (dynamo exporter), checked against PyTorch on an unseen shape."""

from __future__ import annotations

import ast
import contextlib
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from glmopt.errors import StageError
from glmopt.models import LoadedModel
from glmopt.onnx_utils import (
    EXTERNAL_DATA_THRESHOLD,
    PAST_PREFIX,
    PRESENT_PREFIX,
    complete_feeds,
    is_cache_input,
    make_session,
    model_size,
    needs_external_data,
    run_session,
)
from glmopt.schema import StrictModel
from glmopt.stages.base import ModelHandle, StageContext, StageResult


class ExportConfig(StrictModel):
    stage: Literal["export"] = "export"
    opset: int = Field(20, ge=18, le=23, description="ONNX opset of the exported graph")
    sample_shape: tuple[int, int] = Field((2, 16), description="(batch, sequence) traced by the exporter")
    check_shape: tuple[int, int] = Field((3, 37), description="(batch, sequence) of the numerics check")
    atol: float = Field(1e-3, ge=0, le=10, description="absolute tolerance of |ONNX - PyTorch| on the check inputs")
    rtol: float = Field(1e-3, ge=0, le=1, description="relative tolerance, as in numpy.allclose")
    kv_cache: bool = Field(
        True,
        description="decoders: also take past_key_values.N.key/value and return present.N.key/value (Optimum's "
        "names), so that a server generates one token per call; encoders have no cache and ignore this",
    )

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


def export_wrapper(loaded: LoadedModel, kv_cache: bool = False):
    """A module whose forward takes the graph inputs in order and returns its output tensors.

    Without a cache: the single output tensor. With one (decoders): the logits, then each layer's
    present key and value, from the base inputs followed by each layer's past key and value.
    """
    import torch

    class Decoder(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask, position_ids):
            return self.net(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits

    class CachedDecoder(Decoder):
        def forward(self, input_ids, attention_mask, position_ids, *past):
            from transformers import DynamicCache

            cache = DynamicCache(config=self.net.config)
            for layer in range(len(past) // 2):
                cache.update(past[2 * layer], past[2 * layer + 1], layer)
            out = self.net(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    class Encoder(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.net(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    if not loaded.arch.is_decoder:
        return Encoder(loaded.model).eval()
    return (CachedDecoder if kv_cache else Decoder)(loaded.model).eval()


@dataclass(frozen=True)
class CacheLayout:
    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, loaded: LoadedModel) -> CacheLayout:
        """From the architecture's attention facts (one block per layer)."""
        blocks = loaded.arch.attention_blocks(loaded.model)
        return cls(len(blocks), blocks[0].num_kv_heads, blocks[0].head_dim)

    def names(self, prefix: str) -> list[str]:
        return [f"{prefix}{layer}.{part}" for layer in range(self.layers) for part in ("key", "value")]

    def random_past(self, batch: int, length: int, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        shape = (batch, self.kv_heads, length, self.head_dim)
        return [rng.standard_normal(shape).astype(np.float32) for _ in range(2 * self.layers)]


def name_mask_length(model) -> None:
    """Name the mask's length `past_sequence_length + sequence_length` (Optimum's name) throughout the graph.

    The exporter leaves it a bare symbol (s53): it was exported as Dim.DYNAMIC so that torch.export could
    work out its relation to the other two lengths by itself.
    """
    mask = next(v for v in model.graph.input if v.name == "attention_mask")
    symbol = mask.type.tensor_type.shape.dim[1].dim_param
    if not symbol or "sequence_length" in symbol:
        return
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = "past_sequence_length + sequence_length"


def torch_outputs(loaded: LoadedModel, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The PyTorch model's output on full sequences (no cache)."""
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
    """Fail the stage unless |got - expected| <= atol + rtol * |expected| everywhere; returns max |difference|.

    A graph with a key/value cache is checked twice: on the whole sequence with an empty cache, and
    incrementally (the first half, then the rest fed the first call's present tensors as its past),
    both against the same full-sequence reference.
    """
    session = make_session(path, providers)
    mask = feeds["attention_mask"].astype(bool)
    worst = _compare(stage, run_session(session, feeds)[0], expected, mask, atol, rtol, "")
    if any(is_cache_input(i.name) for i in session.get_inputs()):
        tail = _incremental_logits(session, feeds, split=feeds["input_ids"].shape[1] // 2)
        split = expected.shape[1] - tail.shape[1]
        worst = max(
            worst,
            _compare(stage, tail, expected[:, split:], mask[:, split:], atol, rtol, f" (cached past of {split})"),
        )
    return worst


def _incremental_logits(session, feeds: dict[str, np.ndarray], split: int) -> np.ndarray:
    """Logits of positions split.. when the first split positions come from the cache."""
    first = {k: v[:, :split] for k, v in feeds.items()}
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, complete_feeds(session, first)), strict=True))
    rest = {k: v[:, split:] for k, v in feeds.items() if k != "attention_mask"}
    rest["attention_mask"] = feeds["attention_mask"]
    for name, value in outputs.items():
        if name.startswith(PRESENT_PREFIX):
            rest[PAST_PREFIX + name.removeprefix(PRESENT_PREFIX)] = value
    return run_session(session, rest)[0]


def _compare(stage, got, expected, mask, atol, rtol, what: str) -> float:
    if got.shape != expected.shape:
        raise StageError(stage, f"output shape {got.shape}{what} differs from the reference's {expected.shape}")
    # Padded positions carry no meaning and may legitimately differ; compare real tokens only.
    diff = np.abs(got - expected)[mask]
    allowed = atol + rtol * np.abs(expected)[mask]
    worst = float(diff.max()) if diff.size else 0.0
    if not np.isfinite(worst) or (diff > allowed).any():
        i = int(np.argmax(diff - allowed))
        raise StageError(
            stage,
            f"|difference| {float(diff.flat[i]):.3g} exceeds atol {atol:g} + rtol {rtol:g} x |reference| "
            f"{float(np.abs(expected)[mask].flat[i]):.3g} on inputs of shape {mask.shape}{what} (max {worst:.3g})",
        )
    return worst


def run(config: ExportConfig, ctx: StageContext, model: ModelHandle) -> StageResult:
    import onnx
    import torch

    loaded = model.loaded
    arch = loaded.arch
    kv_cache = config.kv_cache and arch.is_decoder
    wrapper = export_wrapper(loaded, kv_cache)
    sample = dummy_inputs(loaded, *config.sample_shape, seed=ctx.seed, pad_last=False)
    input_names, output_names = list(arch.input_names), list(arch.output_names)
    args = [torch.from_numpy(sample[n]) for n in input_names]
    # Optimum's axis names. One Dim object per name, so that every past tensor shares one length
    # symbol: the fusions match attention only when key and value lengths are provably equal.
    batch, sequence = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    dynamic: dict = {name: {0: batch, 1: sequence} for name in input_names}
    if kv_cache:
        layout = CacheLayout.of(loaded)
        rows, length = config.sample_shape
        past_length = 3  # traced with a real past (a length of 0 or 1 would be fixed into the graph)
        args[1] = torch.ones(rows, past_length + length, dtype=torch.int64)  # attention_mask
        args[2] = torch.arange(past_length, past_length + length).expand(rows, length).contiguous()
        args += [torch.from_numpy(t) for t in layout.random_past(rows, past_length, seed=ctx.seed)]
        input_names += layout.names(PAST_PREFIX)
        output_names += layout.names(PRESENT_PREFIX)
        past = torch.export.Dim("past_sequence_length")
        dynamic["attention_mask"] = {0: batch, 1: torch.export.Dim.DYNAMIC}  # past + sequence
        dynamic["past"] = tuple({0: batch, 2: past} for _ in layout.names(""))

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
                tuple(args),
                dynamo=True,
                opset_version=config.opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic,
                optimize=False,
                verbose=False,
            )
        except Exception as exc:
            raise StageError("export", f"torch.onnx.export failed: {str(exc).splitlines()[0]}") from None
    bar.update(1)
    proto = program.model_proto
    name_nodes_by_module(proto)
    if kv_cache:
        name_mask_length(proto)
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
        "inputs": input_names,
        "outputs": output_names,
        "kv_cache": kv_cache,
        "nodes": len(graph.node),
        "max_abs_diff": diff,
        "check_shape": list(config.check_shape),
    }
    return StageResult(ModelHandle(kind="onnx", produced_by="export", onnx_path=out, torch=loaded), details)
