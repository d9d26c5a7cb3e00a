"""quantize: INT8 static QDQ with ranges from glmopt's own streaming calibrator (entropy, MinMax or percentile).

ONNX Runtime's CalibrationMethod.Entropy with default options collects 128-bin histograms and so returns
MinMax ranges; its real 2048-bin search is a Python loop per threshold and keeps activations in memory.
glmopt collects histograms itself (glmopt.calibrate) and hands the ranges to ONNX Runtime's QDQ quantizer.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from glmopt.calibrate.collect import activation_inputs, collect_histograms, matches, select_nodes
from glmopt.calibrate.dataset import CalibrationSet, stage_calibration
from glmopt.calibrate.histogram import (
    compact_histogram,
    entropy_range,
    minmax_range,
    percentile_range,
    quantization_mse,
)
from glmopt.calibrate.sensitivity import measure_sensitivity, ranked
from glmopt.errors import StageError
from glmopt.fileutil import write_json
from glmopt.onnx_utils import make_session, model_files, run_session, save_model
from glmopt.schema import StrictModel
from glmopt.stages.base import ModelHandle, StageContext, StageResult
from glmopt.stages.export import dummy_inputs

QUANTIZABLE_OPS = ("MatMul", "Gemm", "Gather")


class SensitivityConfig(StrictModel):
    tokens: int = Field(
        512, ge=0, le=65536, description="calibration tokens on which each node's SQNR is measured; 0 skips it"
    )
    histograms: int = Field(
        4, ge=0, le=64, description="calibration histograms of the most sensitive tensors kept for the report"
    )


class QuantizeConfig(StrictModel):
    stage: Literal["quantize"] = "quantize"
    mode: Literal["static", "weight_only"] = Field(
        "static",
        description="static: INT8 weights and activations (QDQ), activation ranges from calibration; "
        "weight_only: INT8/INT4 block-quantized weights (ONNX Runtime's MatMulNBits), float activations, "
        "no calibration: for models whose activations static INT8 cannot represent within the budget",
    )
    reason: str | None = Field(None, description="why this mode was chosen, quoted in the report")
    calibration: str | CalibrationSet | None = Field(
        None, description="static: a calibration set file (relative to the recipe) or an inline definition"
    )
    bits: Literal[4, 8] = Field(8, description="weight_only: bits per weight")
    block_size: int = Field(32, ge=16, le=256, description="weight_only: weights per scale (a power of two)")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        0,
        description="weight_only: MatMulNBits compute type; 0 the most accurate available (float), 4 quantizes "
        "activations to INT8 per block inside the kernel (faster on CPUs, a little less accurate)",
    )
    method: Literal["entropy", "minmax", "percentile", "auto"] = Field(
        "entropy",
        description="activation range method; auto picks, per tensor, whichever of entropy, minmax and percentile "
        "gives the lowest expected squared quantization error on its calibration histogram",
    )
    method_overrides: dict[str, Literal["entropy", "minmax", "percentile", "auto"]] = Field(
        default_factory=dict,
        description="node-name glob -> range method for the inputs of matching nodes (first match wins)",
    )
    num_bins: int = Field(2048, ge=128, le=65536, description="histogram bins per tensor (a power of two)")
    num_quantized_bins: int = Field(128, ge=16, le=1024, description="target bins of the entropy search")
    percentile: float = Field(99.999, gt=50, le=100)
    per_channel: bool = True
    symmetric_activations: bool = False
    op_types: list[Literal["MatMul", "Gemm", "Gather"]] = Field(["MatMul", "Gather"], min_length=1)
    activation_matmuls: bool = Field(False, description="also quantize activation x activation MatMuls")
    nodes: list[str] | None = Field(None, description="glob patterns of node names to quantize (default: all)")
    exclude_nodes: list[str] = Field(default_factory=list, description="glob patterns of node names kept in float")
    weight_only_nodes: list[str] = Field(
        default_factory=list,
        description="static: glob patterns of MatMul nodes quantized weight-only (MatMulNBits, `bits`, `block_size`) "
        "instead of static INT8: their activations stay in float, their weights still shrink",
    )
    sensitivity: SensitivityConfig = SensitivityConfig()

    @model_validator(mode="after")
    def _mode_settings(self) -> QuantizeConfig:
        if self.mode == "static" and self.calibration is None:
            raise ValueError("static quantization needs 'calibration' (a calibration set); or use mode weight_only")
        if self.mode == "weight_only":
            if self.calibration is not None:
                raise ValueError("mode weight_only uses no calibration; remove 'calibration'")
            if self.block_size & (self.block_size - 1):
                raise ValueError("'block_size' must be a power of two")
        return self

    @field_validator("num_bins")
    @classmethod
    def _bins(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two (so that ranges grow by exact doubling)")
        return value


RANGE_FUNCTIONS = {
    "entropy": lambda h, c: entropy_range(h, c.num_quantized_bins),
    "minmax": lambda h, c: minmax_range(h),
    "percentile": lambda h, c: percentile_range(h, c.percentile),
}


def tensor_range(hist, method: str, config: QuantizeConfig) -> tuple[tuple[float, float], str, dict | None]:
    """(range, the method that gave it, each candidate's expected error when the method is auto)."""
    if method != "auto":
        return RANGE_FUNCTIONS[method](hist, config), method, None
    candidates = {name: function(hist, config) for name, function in RANGE_FUNCTIONS.items()}
    errors = {
        name: quantization_mse(hist, lo, hi, config.symmetric_activations) for name, (lo, hi) in candidates.items()
    }
    best = min(errors, key=errors.__getitem__)  # ties keep the order above: entropy first
    return candidates[best], best, errors


def tensor_methods(nodes: list, tensors: list[str], config: QuantizeConfig) -> dict[str, str]:
    """The range method of each calibrated tensor: the first override whose glob matches a consumer node."""
    methods = dict.fromkeys(tensors, config.method)
    for pattern, method in reversed(list(config.method_overrides.items())):
        for node in nodes:
            if matches(node.name, [pattern]):
                for name in node.input:
                    if name in methods:
                        methods[name] = method
    return methods


def quantize_with_ranges(
    src: Path,
    dst: Path,
    ranges: dict[str, tuple[float, float]],
    nodes: list[str],
    config: QuantizeConfig,
    vectorized: bool = True,
) -> None:
    """ONNX Runtime's QDQ quantizer with our ranges; vectorized=False runs its stock per-channel loops."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    model = onnx.load(str(src))
    method = {
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "auto": CalibrationMethod.Entropy,  # only a label here: the ranges are ours
    }[config.method]
    data = TensorsData(
        method,
        {n: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for n, (lo, hi) in ranges.items()},
    )
    quantizer = (fast_per_channel(QDQQuantizer) if vectorized else QDQQuantizer)(
        model,
        config.per_channel,
        False,  # reduce_range
        QuantType.QInt8,
        QuantType.QInt8 if config.symmetric_activations else QuantType.QUInt8,
        data,
        nodes,
        [],
        list(config.op_types),
        {
            "ActivationSymmetric": config.symmetric_activations,
            "WeightSymmetric": True,
            "MatMulConstBOnly": not config.activation_matmuls,
            # Only inputs of MatMul/Gemm are quantized: ONNX Runtime's INT8 kernels take float or int8
            # outputs alike, and an extra Q/DQ pair on every output would cost time and accuracy.
            "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
        },
    )
    logging.getLogger().setLevel(logging.ERROR)
    swap = vectorized_initializer_quantization() if vectorized else contextlib.nullcontext()
    with contextlib.redirect_stdout(sys.stderr), swap:
        quantizer.quantize_model()
    save_model(quantizer.model.model, dst)


# ONNX Runtime 1.31 computes per-channel weight scales and quantizes weights one channel at a time in
# Python: about 20 s of the demo model's 30 s quantizer run (200k channels, mostly the 49152-row LM
# head). The two replacements below compute the same numbers in whole-array NumPy; the test
# tests/test_quantize_fast.py checks that the model they produce is byte-identical to the stock one.


def fast_per_channel(base: type) -> type:
    """A subclass of ONNX Runtime's QDQQuantizer whose per-channel weight parameters are vectorized."""
    from onnxruntime.quantization.qdq_quantizer import QDQQuantTensorType, QuantizationParams
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType, tensor_proto_to_array

    class FastPerChannel(base):
        def _calc_initializer_quant_params(self):
            fast = {}
            initializers = {i.name: i for i in self.model.initializer()}
            for name, info in self.tensors_to_quantize.items():
                if (
                    name in initializers
                    and info.axis is not None
                    and info.tensor_type is QDQQuantTensorType.WEIGHT
                    and not self.tensor_quant_overrides.get(name)
                    and self.block_size <= 0
                    and self.min_real_range is None
                ):
                    data = tensor_proto_to_array(initializers[name])
                    axis = info.axis % data.ndim
                    # Per-channel weights are always symmetric in ONNX Runtime (QLinear ops need one zero point).
                    qmin, qmax = get_qmin_qmax_for_qType(self.weight_qType, self.reduce_range, symmetric=True)
                    zero, scale = symmetric_channel_params(data, axis, qmin, qmax)
                    fast[name] = QuantizationParams(
                        zero_point=zero, scale=scale, quant_type=self.weight_qType, axis=axis
                    )
            kept = self.tensors_to_quantize
            self.tensors_to_quantize = {k: v for k, v in kept.items() if k not in fast}
            try:
                params = super()._calc_initializer_quant_params()
            finally:
                self.tensors_to_quantize = kept
            params.update(fast)
            return params

    return FastPerChannel


def symmetric_channel_params(data: np.ndarray, axis: int, qmin, qmax) -> tuple[np.ndarray, np.ndarray]:
    """compute_scale_zp(symmetric=True) of every channel at once, with ONNX Runtime's dtypes and rounding."""
    other = tuple(i for i in range(data.ndim) if i != axis)
    rmin = np.minimum(data.min(axis=other), np.array(0, dtype=data.dtype))
    rmax = np.maximum(data.max(axis=other), np.array(0, dtype=data.dtype))
    absmax = np.maximum(np.abs(rmin), np.abs(rmax))
    scale = (absmax.astype(np.float64) - (-absmax).astype(np.float64)) / (np.float64(qmax) - np.float64(qmin))
    tiny = scale < np.finfo(data.dtype).tiny
    scale = np.where(tiny, 1.0, scale).astype(data.dtype)
    zero = np.full(scale.shape, np.round((qmin + qmax) / np.float64(2.0)), dtype=np.asarray(qmin).dtype)
    return zero, scale


@contextlib.contextmanager
def vectorized_initializer_quantization():
    """Swap ONNX Runtime's per-channel loop in quantize_onnx_initializer for one array expression."""
    import onnxruntime.quantization.qdq_quantizer as qdq
    from onnx import TensorProto, numpy_helper
    from onnxruntime.quantization.quant_utils import (
        ONNX_TYPE_TO_NP_TYPE,
        TENSOR_NAME_QUANT_SUFFIX,
        get_qmin_qmax_for_qType,
        tensor_proto_to_array,
    )

    stock = qdq.quantize_onnx_initializer

    def quantize_onnx_initializer(
        weight, quant_type, zero_point, scale, axis=None, quant_weight_name=None, block_size=0
    ):
        if axis is None or block_size > 0 or quant_type not in (TensorProto.INT8, TensorProto.UINT8):
            return stock(weight, quant_type, zero_point, scale, axis, quant_weight_name, block_size)
        data = tensor_proto_to_array(weight)
        shape = [1] * data.ndim
        shape[axis] = -1
        qmin, qmax = get_qmin_qmax_for_qType(quant_type, reduce_range=False, symmetric=False)
        q = (data.astype(np.float32) / np.asarray(scale).reshape(shape)).round() + np.asarray(zero_point).reshape(shape)
        np.clip(q, qmin, qmax, out=q)
        quantized = q.astype(ONNX_TYPE_TO_NP_TYPE[quant_type]).reshape(weight.dims)
        return numpy_helper.from_array(quantized, quant_weight_name or f"{weight.name}{TENSOR_NAME_QUANT_SUFFIX}")

    qdq.quantize_onnx_initializer = quantize_onnx_initializer
    try:
        yield
    finally:
        qdq.quantize_onnx_initializer = stock


MODE_REASONS = {
    "static": "static INT8: integer kernels for every quantized MatMul, the fastest on CPUs",
    "weight_only": "weight-only: activations stay in float, so activation outliers cannot hurt accuracy",
}


def quantize_mixed(
    src: Path,
    dst: Path,
    ranges: dict[str, tuple[float, float]],
    static_nodes: list[str],
    weight_only_nodes: list[str],
    config: QuantizeConfig,
) -> None:
    """Static INT8 QDQ for `static_nodes`, then weight-only MatMulNBits for `weight_only_nodes`."""
    import onnx

    if not static_nodes and not weight_only_nodes:
        save_model(onnx.load(str(src)), dst)  # an empty node list would read as "quantize everything"
        return
    if not weight_only_nodes:
        quantize_with_ranges(src, dst, ranges, static_nodes, config)
        return
    if not static_nodes:
        quantize_weight_only(src, dst, weight_only_nodes, config)
        return
    staged = dst.with_name(dst.stem + ".static.onnx")
    quantize_with_ranges(src, staged, ranges, static_nodes, config)
    quantize_weight_only(staged, dst, weight_only_nodes, config)
    for f in model_files(staged):
        f.unlink()


def quantize_weight_only(src: Path, dst: Path, nodes: list[str], config: QuantizeConfig) -> None:
    """ONNX Runtime's MatMulNBits (and GatherBlockQuantized for embeddings): symmetric, round to nearest."""
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    op_types = tuple(t for t in config.op_types if t in ("MatMul", "Gather"))
    algo = DefaultWeightOnlyQuantConfig(
        block_size=config.block_size,
        is_symmetric=True,
        accuracy_level=config.accuracy_level,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=op_types,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
        bits=config.bits,
    )
    model = onnx.load(str(src))
    # nodes_to_include only adds to the op types (every MatMul would be taken): name the others instead.
    wanted = set(nodes)
    others = [n.name for n in model.graph.node if n.op_type in op_types and n.name not in wanted]
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=config.bits,
        block_size=config.block_size,
        is_symmetric=True,
        accuracy_level=config.accuracy_level,
        nodes_to_exclude=others,
        op_types_to_quantize=op_types,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
        algo_config=algo,
    )
    logging.getLogger().setLevel(logging.ERROR)
    quantizer.process()
    save_model(quantizer.model.model, dst)


def check_finite_outputs(path: Path, loaded, ctx: StageContext) -> None:
    check = run_session(make_session(path, ctx.providers), dummy_inputs(loaded, 2, 19, seed=ctx.seed))[0]
    if not np.isfinite(check).all():
        raise StageError("quantize", "the quantized model produces non-finite outputs")


def run_weight_only(config: QuantizeConfig, ctx: StageContext, model: ModelHandle) -> StageResult:
    import onnx

    assert model.onnx_path is not None
    start = time.perf_counter()
    proto = onnx.load(str(model.onnx_path), load_external_data=False)
    nodes = select_nodes(proto, config.op_types, config.nodes, config.exclude_nodes, True)
    del proto
    if not nodes:
        raise StageError("quantize", "no node matches op_types / nodes / exclude_nodes: nothing to quantize")
    bar = ctx.progress(total=2, desc=f"quantize (weight-only INT{config.bits})")
    out = ctx.work_dir / "model.onnx"
    # ONNX Runtime's block quantizer takes an embedding table (Gather) at 4 bits only; at 8 bits the table
    # goes through the QDQ quantizer instead (a Gather's input is integer ids: no activation range needed).
    matmuls = [n.name for n in nodes if n.op_type != "Gather" or config.bits == 4]
    gathers = [n.name for n in nodes if n.op_type == "Gather" and config.bits == 8]
    try:
        quantize_mixed(model.onnx_path, out, {}, gathers, matmuls, config)
    except Exception as exc:
        raise StageError(
            "quantize", f"ONNX Runtime's MatMulNBits quantizer failed: {str(exc).splitlines()[0]}"
        ) from None
    bar.update(1)
    graph = onnx.load(str(out), load_external_data=False).graph
    counts = {op: sum(1 for n in graph.node if n.op_type == op) for op in ("MatMulNBits", "GatherBlockQuantized")}
    counts["Gather (QDQ INT8)"] = len(gathers)
    check_finite_outputs(out, model.loaded, ctx)
    bar.update(1)
    bar.close()
    details = {
        "mode": "weight_only",
        "reason": config.reason or MODE_REASONS["weight_only"],
        "bits": config.bits,
        "block_size": config.block_size,
        "accuracy_level": config.accuracy_level,
        "op_types": list(config.op_types),
        "quantized_nodes": sum(counts.values()),
        "quantized_by_op": counts,
        "exclude_nodes": list(config.exclude_nodes),
        "timings": {"quantizer_seconds": round(time.perf_counter() - start, 2)},
    }
    return StageResult(ModelHandle(kind="onnx", produced_by="quantize", onnx_path=out, torch=model.torch), details)


def run(config: QuantizeConfig, ctx: StageContext, model: ModelHandle) -> StageResult:
    import onnx

    if config.mode == "weight_only":
        return run_weight_only(config, ctx, model)
    assert model.onnx_path is not None
    loaded = model.loaded
    clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    batches, cal_info = stage_calibration(
        config.calibration, ctx.base_dir, ctx.location, "quantize", loaded.tokenizer, loaded.arch.input_names
    )

    proto = onnx.load(str(model.onnx_path), load_external_data=False)
    nodes = select_nodes(proto, config.op_types, config.nodes, config.exclude_nodes, not config.activation_matmuls)
    if not nodes:
        raise StageError("quantize", "no node matches op_types / nodes / exclude_nodes: nothing to quantize")
    # Weight-only nodes need no activation ranges: they leave the static set before calibration.
    weight_only = [n.name for n in nodes if n.op_type == "MatMul" and matches(n.name, config.weight_only_nodes)]
    nodes = [n for n in nodes if n.name not in set(weight_only)]
    tensors = activation_inputs(proto, nodes)
    del proto
    lap("prepare_seconds")

    bar = ctx.progress(total=len(batches), desc=f"calibrate ({config.method}, {len(tensors)} tensors)")
    hists = collect_histograms(
        model.onnx_path, tensors, batches, config.num_bins, ctx.providers, ctx.work_dir, on_batch=lambda: bar.update(1)
    )
    bar.close()
    lap("collect_seconds")

    search = ctx.progress(total=len(hists), desc="range search")
    methods = tensor_methods(nodes, tensors, config)
    ranges: dict[str, tuple[float, float]] = {}
    saved: dict[str, dict] = {}
    skipped: list[str] = []
    for name, hist in hists.items():
        if hist.total == 0:
            skipped.append(name)  # only non-finite values: no range exists; its consumers stay in float
        else:
            ranges[name], method, errors = tensor_range(hist, methods[name], config)
            saved[name] = {
                "method": method,
                "range": list(ranges[name]),
                "minmax": [hist.minimum, hist.maximum],
                "values": hist.total,
                "nonfinite": hist.nonfinite,
            }
            if errors is not None:
                saved[name]["picked_by"] = "auto: lowest expected squared error"
                saved[name]["mse"] = errors
        search.update(1)
    search.close()
    lap("search_seconds")
    quantized_nodes = [n.name for n in nodes if not any(i in skipped for i in n.input)]

    ranking: list[dict] = []  # most sensitive first
    if config.sensitivity.tokens:
        chosen = [n for n in nodes if n.name in set(quantized_nodes)]
        bar = ctx.progress(total=len(chosen), desc=f"sensitivity (SQNR of {len(chosen)} nodes)")
        in_graph_order = measure_sensitivity(
            model.onnx_path,
            chosen,
            ranges,
            batches,
            config.sensitivity.tokens,
            config.per_channel,
            config.symmetric_activations,
            ctx.providers,
            ctx.work_dir,
            on_node=lambda: bar.update(1),
        )
        bar.close()
        ranking = ranked(in_graph_order)
        write_json(
            ctx.work_dir / SENSITIVITY_FILE,
            {
                "tokens": config.sensitivity.tokens,
                "nodes": ranking,
                "graph_order": [r["node"] for r in in_graph_order],
                "histograms": worst_histograms(ranking, hists, saved, config),
            },
        )
        lap("sensitivity_seconds")
    ranges_file = ctx.work_dir / "calibration_ranges.json"
    write_json(
        ranges_file,
        {
            "method": config.method,
            "num_bins": config.num_bins,
            "num_quantized_bins": config.num_quantized_bins,
            "tensors": saved,
        },
    )

    out = ctx.work_dir / "model.onnx"
    try:
        quantize_mixed(model.onnx_path, out, ranges, quantized_nodes, weight_only, config)
    except Exception as exc:
        raise StageError("quantize", f"ONNX Runtime's quantizer failed: {str(exc).splitlines()[0]}") from None
    lap("quantizer_seconds")
    check_finite_outputs(out, loaded, ctx)

    clipped = sum(1 for s in saved.values() if s["range"] != s["minmax"])
    picked = [s["method"] for s in saved.values()]
    details = {
        "mode": "static",
        "reason": config.reason or MODE_REASONS["static"],
        "method": config.method,
        "method_overrides": dict(config.method_overrides),
        "tensors_per_method": {m: picked.count(m) for m in sorted(set(picked))},
        "per_channel": config.per_channel,
        "op_types": list(config.op_types),
        "quantized_nodes": len(quantized_nodes),
        "calibrated_tensors": len(ranges),
        "tensors_without_range": skipped,
        "ranges_narrower_than_minmax": clipped,
        "calibration": cal_info,
        "ranges_file": ranges_file.name,
        "exclude_nodes": list(config.exclude_nodes),
        "weight_only": {"nodes": weight_only, "bits": config.bits, "block_size": config.block_size}
        if weight_only
        else None,
        "timings": timings,
    }
    if ranking:
        details["sensitivity"] = {
            "file": SENSITIVITY_FILE,
            "tokens": config.sensitivity.tokens,
            "nodes": len(ranking),
            "most_sensitive": ranking[:REPORTED_NODES],
        }
    handle = ModelHandle(kind="onnx", produced_by="quantize", onnx_path=out, torch=loaded)
    state = QuantizeState(
        source=model.onnx_path,
        ranges=ranges,
        quantized_nodes=quantized_nodes,
        config=config,
        ranking=[r["node"] for r in ranking],
        weight_only_nodes=weight_only,
        op_types={n.name: n.op_type for n in nodes},
    )
    return StageResult(handle, details, state=state)


SENSITIVITY_FILE = "sensitivity.json"
REPORTED_NODES = 10


@dataclass
class QuantizeState:
    """What re-quantizing with other exclusions needs: the float model, its ranges, the sensitivity ranking."""

    source: Path
    ranges: dict[str, tuple[float, float]]
    quantized_nodes: list[str]
    config: QuantizeConfig
    ranking: list[str]  # quantized node names, most sensitive first (empty when sensitivity was skipped)
    weight_only_nodes: list[str] = dataclass_field(default_factory=list)
    op_types: dict[str, str] = dataclass_field(default_factory=dict)  # node name -> op type

    def split_weight_only(self, names: list[str]) -> tuple[list[str], list[str]]:
        """(the MatMuls among `names`, which can be weight-only; the rest, which go to float instead)."""
        moved = [n for n in names if self.op_types.get(n) == "MatMul"]
        return moved, [n for n in names if n not in set(moved)]

    def quantize(
        self, dst: Path, keep_float: list[str] = (), only: list[str] | None = None, weight_only: list[str] = ()
    ) -> Path:
        """Quantize the float model again from the same ranges: `keep_float` nodes stay in float, `weight_only`
        MatMuls become weight-only (other op types among them stay in float), `only` limits the static set."""
        moved, rest = self.split_weight_only(weight_only)
        moved, floated = set(moved), set(keep_float) | set(rest)
        nodes = [n for n in (only if only is not None else self.quantized_nodes) if n not in floated | moved]
        block_only = [] if only is not None else [n for n in self.weight_only_nodes if n not in floated]
        quantize_mixed(self.source, dst, self.ranges, nodes, [*block_only, *sorted(moved)], self.config)
        return dst


def save_state(state: QuantizeState) -> dict:
    return {
        "ranges": {k: list(v) for k, v in state.ranges.items()},
        "quantized_nodes": state.quantized_nodes,
        "ranking": state.ranking,
        "weight_only_nodes": state.weight_only_nodes,
        "op_types": state.op_types,
    }


def load_state(saved: dict, config: QuantizeConfig, model: ModelHandle) -> QuantizeState:
    """The state of a cached run; `model` is this run's input, the float model fallback re-quantizes."""
    return QuantizeState(
        source=model.onnx_path,
        ranges={k: (float(v[0]), float(v[1])) for k, v in saved["ranges"].items()},
        quantized_nodes=list(saved["quantized_nodes"]),
        config=config,
        ranking=list(saved["ranking"]),
        weight_only_nodes=list(saved.get("weight_only_nodes", [])),
        op_types=dict(saved.get("op_types", {})),
    )


def worst_histograms(ranking: list[dict], hists: dict, saved: dict, config: QuantizeConfig) -> dict:
    """Calibration histograms of the activations feeding the most sensitive nodes, with every method's range."""
    out: dict[str, dict] = {}
    for entry in ranking:
        name = entry["activation"]
        if len(out) >= config.sensitivity.histograms:
            break
        if name is None or name in out or name not in saved:
            continue
        hist = hists[name]
        out[name] = {
            "node": entry["node"],
            "used": saved[name]["method"],
            "ranges": {method: list(RANGE_FUNCTIONS[method](hist, config)) for method in RANGE_FUNCTIONS},
            "histogram": compact_histogram(hist),
        }
    return out
