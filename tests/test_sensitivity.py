"""Per-node sensitivity: the simulated INT8 error must be the error ONNX Runtime's QDQ model really makes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from glmopt.calibrate.histogram import TensorHistogram, minmax_range
from glmopt.calibrate.sensitivity import activation_qparams, measure_sensitivity, ranked, sqnr_db
from glmopt.onnx_utils import make_session
from glmopt.stages.quantize import QuantizeConfig, QuantizeState
from glmopt.tuning import glob_literal

K, HIDDEN, N = 32, 48, 24
PROVIDERS = ["CPUExecutionProvider"]


def two_layer_model(path, seed: int = 0):
    """x -> MatMul(w1) -> h -> Relu -> MatMul(w2) -> y. Channel 3 of x carries outliers 40x larger."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.2, (K, HIDDEN)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (HIDDEN, N)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first/MatMul"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="second/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", N]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", "seq", HIDDEN]),
        ],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def batches(seed: int = 1, count: int = 4):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.normal(0, 1, (2, 16, K)).astype(np.float32)
        x[..., 3] *= 40.0
        out.append({"x": x})
    return out


@pytest.fixture
def calibrated(tmp_path):
    path = two_layer_model(tmp_path / "two.onnx")
    data = batches()
    session = make_session(path, PROVIDERS)
    hists = {"x": TensorHistogram(2048), "r": TensorHistogram(2048)}
    for feeds in data:
        y, h = session.run(None, feeds)
        hists["x"].update(feeds["x"])
        hists["r"].update(np.maximum(h, 0))
    ranges = {name: minmax_range(hist) for name, hist in hists.items()}
    proto = onnx.load(str(path))
    nodes = [n for n in proto.graph.node if n.op_type == "MatMul"]
    return path, data, ranges, nodes


def measured_sqnr(tmp_path, path, data, ranges, only: str, output: str, config: QuantizeConfig) -> float:
    """SQNR of `output` in a QDQ model where only `only` is quantized, measured by running both models."""
    state = QuantizeState(source=path, ranges=ranges, quantized_nodes=[only], config=config, ranking=[])
    quantized = make_session(state.quantize(tmp_path / f"{only.replace('/', '_')}.onnx"), PROVIDERS)
    reference = make_session(path, PROVIDERS)
    index = [o.name for o in reference.get_outputs()].index(output)
    ref = np.concatenate([reference.run(None, f)[index] for f in data])
    got = np.concatenate([quantized.run(None, f)[index] for f in data])
    return sqnr_db(ref, got)


@pytest.mark.parametrize("per_channel", [True, False])
def test_simulated_sqnr_matches_ort_qdq_model(calibrated, tmp_path, per_channel):
    path, data, ranges, nodes = calibrated
    config = QuantizeConfig(calibration={"data": {"files": ["unused.txt"]}}, per_channel=per_channel)
    results = {
        r["node"]: r
        for r in measure_sensitivity(path, nodes, ranges, data, 10_000, per_channel, False, PROVIDERS, tmp_path)
    }
    assert set(results) == {"first/MatMul", "second/MatMul"}
    for node, output in (("first/MatMul", "h"), ("second/MatMul", "y")):
        real = measured_sqnr(tmp_path, path, data, ranges, node, output, config)
        assert results[node]["sqnr_db"] == pytest.approx(real, abs=0.3), node


def test_outlier_input_ranks_most_sensitive_and_the_activation_is_to_blame(calibrated, tmp_path):
    path, data, ranges, nodes = calibrated
    results = ranked(measure_sensitivity(path, nodes, ranges, data, 10_000, True, False, PROVIDERS, tmp_path))
    worst = results[0]
    assert worst["node"] == "first/MatMul" and worst["activation"] == "x"
    # Its input's outlier channel stretches the range: the activation, not the weight, loses the bits.
    assert worst["activation_sqnr_db"] < worst["weight_sqnr_db"]
    assert results[1]["sqnr_db"] > worst["sqnr_db"]


def test_token_budget_limits_the_rows_read(calibrated, tmp_path):
    path, data, ranges, nodes = calibrated
    few = measure_sensitivity(path, nodes, ranges, data, 16, True, False, PROVIDERS, tmp_path)
    many = measure_sensitivity(path, nodes, ranges, data, 10_000, True, False, PROVIDERS, tmp_path)
    assert [r["node"] for r in few] == [r["node"] for r in many]
    assert few[0]["sqnr_db"] != many[0]["sqnr_db"]  # 16 tokens are one row of the first batch, not all 128


def test_activation_qparams_follow_onnxruntime():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    for lo, hi in [(-1.5, 3.0), (0.2, 4.0), (-7.0, -0.5)]:
        scale, zero, qmin, qmax = activation_qparams(lo, hi, symmetric=False)
        ort_zero, ort_scale = compute_scale_zp(np.float32(lo), np.float32(hi), np.uint8(0), np.uint8(255))
        assert (qmin, qmax) == (0, 255)
        assert scale == pytest.approx(float(ort_scale), rel=1e-6) and zero == int(ort_zero)
        scale, zero, qmin, qmax = activation_qparams(lo, hi, symmetric=True)
        ort_zero, ort_scale = compute_scale_zp(
            np.float32(lo), np.float32(hi), np.int8(-127), np.int8(127), symmetric=True
        )
        assert scale == pytest.approx(float(ort_scale), rel=1e-6) and zero == int(ort_zero) == 0


def test_keeping_every_node_in_float_returns_the_float_model(calibrated, tmp_path):
    path, data, ranges, nodes = calibrated
    config = QuantizeConfig(calibration={"data": {"files": ["unused.txt"]}})
    state = QuantizeState(
        source=path, ranges=ranges, quantized_nodes=[n.name for n in nodes], config=config, ranking=[]
    )
    out = state.quantize(tmp_path / "none.onnx", keep_float=[n.name for n in nodes])
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in onnx.load(str(out)).graph.node)


def test_glob_literal_matches_only_its_own_name():
    import fnmatch

    name = "/model/layers.[0]/mlp*/down?proj/MatMul"
    pattern = glob_literal(name)
    assert fnmatch.fnmatchcase(name, pattern)
    assert not fnmatch.fnmatchcase("/model/layers.0/mlpX/down_proj/MatMul", pattern)
