"""ONNX Runtime sessions and ONNX file handling shared by the stages."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# Protobuf cannot hold a model over 2 GB; past this, weights go to an external data file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def default_providers() -> list[str]:
    """Execution providers chosen at run time: CUDA where onnxruntime-gpu sees a GPU, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = os.environ.get("GLMOPT_PROVIDERS")
    if wanted:
        return [p for p in wanted.split(",") if p in available] or ["CPUExecutionProvider"]
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def make_session(path: Path, providers: list[str], threads: int = 0, optimize: bool = True, arena: bool = True):
    """An inference session. arena=False returns activation memory to the system after each run.

    ONNX Runtime's CPU arena grows in powers of two and keeps what it took; a model that outputs many
    activations (calibration) pays for that in peak RSS.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=providers)


def needs_external_data(model) -> bool:
    """Whether a ModelProto's weights are too big for one protobuf file.

    Sums the weight bytes rather than calling ModelProto.ByteSize(), which protobuf refuses past 2 GB.
    """
    return sum(len(i.raw_data) for i in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD


def save_model(model, path: Path) -> None:
    """Save an onnx.ModelProto; weights go to `<name>.data` beside it when the model is too big for one file."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    if needs_external_data(model):
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


def model_files(path: Path) -> list[Path]:
    """The ONNX file and its external data file, if any."""
    files = [path]
    data = path.with_name(path.name + ".data")
    if data.exists():
        files.append(data)
    return files


def model_size(path: Path) -> int:
    return sum(f.stat().st_size for f in model_files(path))


# Optimum's names for a decoder's key/value cache: inputs `past_key_values.N.key|value`, outputs `present.N.key|value`.
PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
ORT_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def is_cache_input(name: str) -> bool:
    return name.startswith(PAST_PREFIX)


def complete_feeds(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feeds a session takes: the caller's, less extra keys, plus an empty cache (past length 0) for
    each `past_key_values.*` input the caller did not give, so that a full-sequence call needs no cache."""
    complete = {}
    for graph_input in session.get_inputs():
        name = graph_input.name
        if name in feeds:
            complete[name] = feeds[name]
        elif is_cache_input(name):
            batch = len(feeds["input_ids"])
            _, heads, _, head_dim = graph_input.shape
            complete[name] = np.zeros((batch, heads, 0, head_dim), dtype=ORT_FLOAT_TYPES[graph_input.type])
    return complete


def run_session(session, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session.run(None, complete_feeds(session, feeds))
