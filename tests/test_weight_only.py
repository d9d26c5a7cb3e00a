"""Weight-only INT8/INT4 (ONNX Runtime's MatMulNBits): the second quantization mode, through a build."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from test_build import build

from recipes import decoder_recipe, write


def weight_only_recipe(model, data, bits: int, **quantize):
    recipe = decoder_recipe(model, data, name=f"w{bits}", budget=100.0)
    recipe["stages"][2] = {"stage": "quantize", "mode": "weight_only", "bits": bits, **quantize}
    return recipe


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_build_quantizes_every_weight_matmul_and_the_embedding(bits, tiny_models, text_files, tmp_path):
    reason = "static INT8 missed the perplexity budget by 40 points"
    settings = {"reason": reason} if bits == 8 else {}
    recipe = weight_only_recipe(tiny_models["glm"], text_files, bits, **settings)
    code, out, result = build(write(tmp_path / "r.yaml", recipe), tmp_path)
    assert code == 0, result.output
    artifact = Path(out["artifact"])
    graph = onnx.load(str(artifact / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    # 2 layers x (q, k, v, o, gate_up, down) + the LM head; the embedding table as GatherBlockQuantized.
    assert ops.count("MatMulNBits") == 13
    assert all(a.i == bits for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits")
    if bits == 4:
        assert ops.count("GatherBlockQuantized") == 1 and "DequantizeLinear" not in ops
    else:  # ONNX Runtime's block quantizer takes tables at 4 bits only: the table goes through QDQ as INT8
        tables = {i.name: i for i in graph.initializer if "embed_tokens" in i.name}
        eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
        assert tables["net.model.embed_tokens.weight_quantized"].data_type in eight_bit
        assert "net.model.embed_tokens.weight" not in tables
        # Only the table and the Gather's output carry Q/DQ: no activation feeds a MatMul through them.
        assert ops.count("DequantizeLinear") == 2 and ops.count("QuantizeLinear") == 1
    report = json.loads((artifact / "report.json").read_text())
    details = next(s for s in report["stages"] if s["name"] == "quantize")["details"]
    assert details["mode"] == "weight_only" and details["bits"] == bits
    # The recipe's reason is quoted; without one, the mode's own.
    assert details["reason"] == reason if bits == 8 else "activations stay in float" in details["reason"]
    models = report["evaluation"]["models"]
    assert models["quantize"]["size_bytes"] < (0.4 if bits == 8 else 0.3) * models["export"]["size_bytes"]
    drop = models["quantize"]["drop_pct"]["perplexity"]
    assert abs(drop) < (2.0 if bits == 8 else 25.0), drop
    assert "weight-only" in (artifact / "report.md").read_text()


def test_static_model_with_weight_only_down_projections(tiny_models, text_files, tmp_path):
    recipe = decoder_recipe(
        tiny_models["glm"], text_files, name="mixed", budget=100.0, quantize={"weight_only_nodes": ["*down_proj*"]}
    )
    code, out, result = build(write(tmp_path / "r.yaml", recipe), tmp_path)
    assert code == 0, result.output
    artifact = Path(out["artifact"])
    graph = onnx.load(str(artifact / "model.onnx")).graph
    by_name = {n.name: n.op_type for n in graph.node}
    block = [n for n, op in by_name.items() if op == "MatMulNBits"]
    assert sorted(block) == ["model.layers.0.mlp.down_proj/MatMul_Q8", "model.layers.1.mlp.down_proj/MatMul_Q8"]
    assert "MatMulIntegerToFloat" in by_name.values() or "DequantizeLinear" in by_name.values()  # the rest static
    details = next(s for s in json.loads((artifact / "report.json").read_text())["stages"] if s["name"] == "quantize")
    assert details["details"]["weight_only"]["nodes"] == [
        "model.layers.0.mlp.down_proj/MatMul",
        "model.layers.1.mlp.down_proj/MatMul",
    ]
    assert "plus 2 nodes weight-only INT8" in (artifact / "report.md").read_text()
