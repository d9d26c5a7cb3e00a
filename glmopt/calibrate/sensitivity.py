"""Per-node quantization sensitivity: the error each quantized node adds when it alone is quantized.

For a MatMul or Gemm with a constant weight, the FP32 model's real input activation X and the weight W
are fake-quantized exactly as the QDQ model will quantize them (activation: the calibrated range,
uint8 asymmetric or int8 symmetric; weight: int8 symmetric, per output channel or per tensor), and
the product is compared with the FP32 product. SQNR = 10 log10(sum Y^2 / sum (Y - Yq)^2) in dB:
higher is better, and 6 dB is worth about one bit. Activation-only and weight-only figures say which
side loses the precision. A Gather (embedding) quantizes only its table: its SQNR is that of the rows
the samples look up. Every input is the FP32 model's, so errors of earlier nodes do not compound here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from glmopt.calibrate.collect import augmented_session, real_tokens
from glmopt.onnx_utils import complete_feeds, is_cache_input

# ONNX Runtime's ranges for the types the QDQ quantizer emits here (quant_utils.get_qmin_qmax_for_qType).
UINT8_RANGE = (0, 255)
INT8_SYMMETRIC_RANGE = (-127, 127)


def activation_qparams(lo: float, hi: float, symmetric: bool) -> tuple[float, float, int, int]:
    """(scale, zero point, qmin, qmax) for an activation range, as ONNX Runtime's compute_scale_zp does."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmin, qmax = INT8_SYMMETRIC_RANGE if symmetric else UINT8_RANGE
    if symmetric:
        lo, hi = -max(-lo, hi), max(-lo, hi)
    scale = (hi - lo) / (qmax - qmin)
    if scale < np.finfo(np.float32).tiny:
        return 1.0, 0.0, qmin, qmax
    zero = 0.0 if symmetric else float(np.clip(round(qmin - lo / scale), qmin, qmax))
    return scale, zero, qmin, qmax


def fake_quant(x: np.ndarray, scale, zero, qmin: int, qmax: int) -> np.ndarray:
    """Quantize then dequantize (round half to even, as ONNX QuantizeLinear does)."""
    q = np.clip(np.rint(x / scale) + zero, qmin, qmax)
    return ((q - zero) * scale).astype(np.float32)


def weight_fake_quant(w: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric int8 weights, one scale per slice along `axis` (per channel) or one for the tensor."""
    qmin, qmax = INT8_SYMMETRIC_RANGE
    if axis is None:
        absmax = np.abs(w).max()
    else:
        other = tuple(i for i in range(w.ndim) if i != axis)
        absmax = np.abs(w).max(axis=other, keepdims=True)
    scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)
    return fake_quant(w, scale, 0.0, qmin, qmax)


SQNR_CEILING_DB = 200.0  # reported for an exact result; JSON has no infinity


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    signal = float(np.square(reference, dtype=np.float64).sum())
    noise = float(np.square(reference.astype(np.float64) - approx).sum())
    if noise == 0.0:
        return SQNR_CEILING_DB
    if signal == 0.0:
        return -SQNR_CEILING_DB
    return float(min(10.0 * np.log10(signal / noise), SQNR_CEILING_DB))


def _rows(value: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Real (unpadded) token rows of an activation, as a 2-D (tokens, features) array."""
    value = real_tokens(value, mask)
    return value.reshape(-1, value.shape[-1]) if value.ndim > 1 else value.reshape(-1, 1)


def measure_sensitivity(
    model_path: Path,
    nodes: list,
    ranges: dict[str, tuple[float, float]],
    batches: list[dict[str, np.ndarray]],
    max_tokens: int,
    per_channel: bool,
    symmetric_activations: bool,
    providers: list[str],
    work_dir: Path,
    on_node: Callable[[], None] = lambda: None,
) -> list[dict]:
    """SQNR of each node in `nodes` (ONNX NodeProtos that will be quantized), in graph order."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model_path), load_external_data=False)
    initializers = {i.name: i for i in proto.graph.initializer}
    # A decoder's cache inputs are empty in these full-sequence runs: nothing to score there.
    graph_inputs = {i.name for i in proto.graph.input if not is_cache_input(i.name)}
    del proto

    def weight(name: str) -> np.ndarray:
        return numpy_helper.to_array(initializers[name], base_dir=str(model_path.parent)).astype(np.float32)

    wanted: list[str] = []  # intermediate tensors the augmented model must output
    for node in nodes:
        if node.op_type == "Gather":  # its indices are integers, read from the graph's inputs
            continue
        for name in node.input:
            if name and name not in initializers and name not in graph_inputs and name not in wanted:
                wanted.append(name)

    activations: dict[str, list[np.ndarray]] = {name: [] for name in [*wanted, *graph_inputs]}
    with augmented_session(model_path, wanted, work_dir / "sensitivity-model", providers) as session:
        for feeds in _first_tokens(batches, max_tokens):
            mask = feeds.get("attention_mask")
            inputs = {k: v for k, v in feeds.items() if k in graph_inputs}
            values = session.run(wanted, complete_feeds(session, feeds)) if wanted else []
            for name, value in [*zip(wanted, values, strict=True), *inputs.items()]:
                activations[name].append(_rows(value, mask))
    del session  # the FP32 model's weights: not needed while the nodes are scored
    joined = {name: np.concatenate(parts)[:max_tokens] for name, parts in activations.items()}
    del activations

    results = []
    for node in nodes:
        entry = _node_sensitivity(node, initializers, weight, joined, ranges, per_channel, symmetric_activations)
        if entry is not None:
            results.append(entry)
        on_node()
    return results


def _first_tokens(batches: list[dict[str, np.ndarray]], max_tokens: int) -> list[dict[str, np.ndarray]]:
    """Leading rows of the calibration batches holding at least max_tokens real tokens."""
    out, seen = [], 0
    for feeds in batches:
        mask = feeds.get("attention_mask")
        if mask is not None:
            per_row = mask.sum(axis=1)
        else:  # (batch, sequence, ...) inputs without a mask: every position counts
            first = next(iter(feeds.values()))
            per_row = np.full(first.shape[0], first.shape[1] if first.ndim > 1 else 1)
        rows = int(np.searchsorted(np.cumsum(per_row), max_tokens - seen) + 1)
        rows = min(rows, len(per_row))
        out.append({k: v[:rows] for k, v in feeds.items()})
        seen += int(per_row[:rows].sum())
        if seen >= max_tokens:
            break
    return out


def _node_sensitivity(node, initializers, weight, activations, ranges, per_channel, symmetric) -> dict | None:
    attrs = {a.name: a.i for a in node.attribute}
    if node.op_type == "Gather":
        table_name, ids_name = node.input[0], node.input[1]
        if table_name not in initializers or ids_name not in activations:
            return None
        ids = activations[ids_name].reshape(-1).astype(np.int64)
        table = weight(table_name)
        score = sqnr_db(table[ids], weight_fake_quant(table, None)[ids])
        return {
            "node": node.name,
            "op_type": node.op_type,
            "activation": None,
            "sqnr_db": score,
            "activation_sqnr_db": None,
            "weight_sqnr_db": score,
        }
    a_name, b_name = node.input[0], node.input[1]
    # Only activation x constant-weight products are quantized by this stage (and a transposed
    # activation has no token rows to sample).
    if node.op_type not in ("MatMul", "Gemm") or attrs.get("transA", 0) == 1:
        return None
    if b_name not in initializers or a_name not in ranges or a_name not in activations:
        return None
    x, w = activations[a_name], weight(b_name)
    if w.ndim != 2:
        return None
    if attrs.get("transB", 0) == 1:
        w = w.T
    # With W laid out (in, out), the output channel is axis 1 whatever the node's own layout.
    wq = weight_fake_quant(w, 1 if per_channel else None)
    scale, zero, qmin, qmax = activation_qparams(*ranges[a_name], symmetric)
    xq = fake_quant(x, scale, zero, qmin, qmax)
    y = x @ w
    return {
        "node": node.name,
        "op_type": node.op_type,
        "activation": a_name,
        "sqnr_db": sqnr_db(y, xq @ wq),
        "activation_sqnr_db": sqnr_db(y, xq @ w),
        "weight_sqnr_db": sqnr_db(y, x @ wq),
    }


def ranked(results: list[dict]) -> list[dict]:
    """Most sensitive first: lowest SQNR; ties keep graph order."""
    return sorted(results, key=lambda r: r["sqnr_db"])
