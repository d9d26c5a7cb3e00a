"""The vectorized per-channel weight quantization gives byte-for-byte the model ONNX Runtime's loops give."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from glmopt.stages.quantize import QuantizeConfig, quantize_with_ranges


def graph_with_weights(path):
    """MatMul, Gemm (transB) and Gather weights, with an all-zero channel and a tiny one."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (16, 24)).astype(np.float32)
    w1[:, 5] = 0.0
    w1[:, 7] *= 1e-30
    w2 = rng.normal(0, 2.0, (12, 24)).astype(np.float32)  # Gemm with transB: channels are rows
    table = rng.normal(0, 1.0, (50, 16)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["x"], name="embed/Gather"),
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first/MatMul"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r2", "w2"], ["y"], name="second/Gemm", transB=1),
        helper.make_node("Reshape", ["r", "shape"], ["r2"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "w",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [24, 12])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(np.array([-1, 24], dtype=np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("symmetric_activations", [False, True])
def test_vectorized_quantizer_output_is_identical_to_stock(tmp_path, symmetric_activations, monkeypatch):
    import glmopt.stages.quantize as quantize

    vectorized_weights = []
    real = quantize.symmetric_channel_params
    monkeypatch.setattr(
        quantize, "symmetric_channel_params", lambda data, *a: vectorized_weights.append(data.shape) or real(data, *a)
    )
    src = graph_with_weights(tmp_path / "w.onnx")
    ranges = {"x": (np.float32(-3.0), np.float32(2.5)), "r2": (np.float32(0.0), np.float32(4.0))}
    nodes = ["embed/Gather", "first/MatMul", "second/Gemm"]
    config = QuantizeConfig(
        calibration="unused.yaml", op_types=["MatMul", "Gemm", "Gather"], symmetric_activations=symmetric_activations
    )
    quantize_with_ranges(src, tmp_path / "fast.onnx", ranges, nodes, config, vectorized=True)
    quantize_with_ranges(src, tmp_path / "stock.onnx", ranges, nodes, config, vectorized=False)
    fast, stock = onnx.load(str(tmp_path / "fast.onnx")), onnx.load(str(tmp_path / "stock.onnx"))
    assert {i.name for i in fast.graph.initializer} == {i.name for i in stock.graph.initializer}
    by_name = {i.name: i for i in stock.graph.initializer}
    for init in fast.graph.initializer:
        a, b = numpy_helper.to_array(init), numpy_helper.to_array(by_name[init.name])
        assert a.dtype == b.dtype and a.shape == b.shape, init.name
        assert a.tobytes() == b.tobytes(), init.name
    assert fast.SerializeToString() == stock.SerializeToString()
    assert sorted(vectorized_weights) == [(12, 24), (16, 24)]  # both per-channel weights took the fast path
    assert any(i.data_type == TensorProto.INT8 and i.dims == [16, 24] for i in fast.graph.initializer)
