"""Serving handoff: write a published version as an NVIDIA Triton model repository."""

from __future__ import annotations

import shutil
from pathlib import Path

from glmopt.errors import InputError
from glmopt.fileutil import staging_dir

# ONNX TensorProto element type -> Triton data type.
TRITON_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    16: "TYPE_BF16",
}


def _dims(value_info) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def _tensor_block(value_info) -> str:
    dtype = TRITON_TYPES.get(value_info.type.tensor_type.elem_type)
    if dtype is None:
        raise InputError(f"tensor '{value_info.name}' has an element type Triton cannot serve")
    dims = ", ".join(str(d) for d in _dims(value_info))
    return f'  {{\n    name: "{value_info.name}"\n    data_type: {dtype}\n    dims: [ {dims} ]\n  }}'


def triton_config(model_path: Path, model_name: str) -> str:
    """config.pbtxt for the ONNX Runtime backend; dynamic dims (batch, sequence) become -1."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    return "\n".join(
        [
            f'name: "{model_name}"',
            'platform: "onnxruntime_onnx"',
            "max_batch_size: 0  # dims below include the batch dimension",
            "input [",
            ",\n".join(_tensor_block(v) for v in inputs),
            "]",
            "output [",
            ",\n".join(_tensor_block(v) for v in graph.output),
            "]",
            "",
        ]
    )


def export_triton(version_dir: Path, dest: Path, model_name: str) -> Path:
    """Write DEST/<model_name>/{config.pbtxt, 1/model.onnx[, model.onnx.data]}; atomically, never over a model."""
    target = dest / model_name
    if target.exists():
        raise InputError(f"{target} already exists; choose another destination or model name")
    model = version_dir / "model.onnx"
    if not model.is_file():
        raise InputError(f"{version_dir}: no model.onnx")
    with staging_dir(target) as tmp:
        (tmp / "1").mkdir()
        for f in (model, version_dir / "model.onnx.data"):
            if f.exists():
                shutil.copyfile(f, tmp / "1" / f.name)
        (tmp / "config.pbtxt").write_text(triton_config(model, model_name))
        shutil.copyfile(version_dir / "manifest.json", tmp / "glmopt-manifest.json")
    return target
