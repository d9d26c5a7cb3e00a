"""Calibration over a real (tiny) ONNX model: memory independent of the sample count, padding ignored."""

from __future__ import annotations

import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest

from glmopt.calibrate.collect import activation_inputs, collect_histograms, select_nodes
from glmopt.models import load_model
from glmopt.pipeline import progress_factory
from glmopt.stages.base import ModelHandle, StageContext
from glmopt.stages.export import ExportConfig, dummy_inputs
from glmopt.stages.export import run as export


@pytest.fixture(scope="module")
def exported_glm(tiny_models):
    loaded = load_model(tiny_models["glm"])
    work = Path(tempfile.mkdtemp())
    ctx = StageContext(work, work, loaded, [], ["CPUExecutionProvider"], 0, progress_factory(False))
    path = export(ExportConfig(), ctx, ModelHandle("torch", "reference", torch=loaded)).model.onnx_path
    proto = onnx.load(str(path))
    tensors = activation_inputs(proto, select_nodes(proto, ["MatMul", "Gather"], None, [], True))
    return loaded, path, tensors, work


def peak_python_memory(loaded, path, tensors, work, n_batches):
    batches = [dummy_inputs(loaded, 4, 64, seed=i) for i in range(n_batches)]
    tracemalloc.start()
    tracemalloc.reset_peak()
    hists = collect_histograms(path, tensors, batches, 2048, ["CPUExecutionProvider"], work)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, hists


def test_memory_does_not_grow_with_sample_count(exported_glm):
    loaded, path, tensors, work = exported_glm
    peak_few, few = peak_python_memory(loaded, path, tensors, work, 3)
    peak_many, many = peak_python_memory(loaded, path, tensors, work, 30)
    assert sum(h.total for h in many.values()) > 9 * sum(h.total for h in few.values())
    # Ten times the samples, the same peak (activations are binned and dropped batch by batch).
    assert peak_many < 1.3 * peak_few


def test_calibrated_tensors_are_the_weight_matmul_inputs(exported_glm):
    loaded, path, tensors, _ = exported_glm
    proto = onnx.load(str(path), load_external_data=False)
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul" and n.name.endswith("proj/MatMul")]
    assert matmuls and all(n.input[0] in tensors for n in matmuls)
    assert "input_ids" not in tensors  # integer inputs are never calibrated


def test_padded_positions_do_not_reach_the_histograms(exported_glm):
    loaded, path, tensors, work = exported_glm
    feeds = dummy_inputs(loaded, 2, 40)
    padded = int((feeds["attention_mask"] == 0).sum())
    assert padded > 0
    hists = collect_histograms(path, tensors, [feeds], 256, ["CPUExecutionProvider"], work)
    real_tokens = int(feeds["attention_mask"].sum())
    hidden = loaded.model.config.hidden_size
    proto = onnx.load(str(path), load_external_data=False)
    q_proj = next(n for n in proto.graph.node if n.name == "model.layers.0.self_attn.q_proj/MatMul")
    hist = hists[q_proj.input[0]]
    assert hist.total == real_tokens * hidden  # only real tokens' hidden states were binned
    assert np.isfinite(hist.minimum)
