"""Stream activations of chosen tensors through an ONNX model and fold them into histograms."""

from __future__ import annotations

import contextlib
import fnmatch
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from glmopt.calibrate.histogram import TensorHistogram
from glmopt.onnx_utils import complete_feeds, make_session

FLOAT_TYPES = {1, 10, 16}  # FLOAT, FLOAT16, BFLOAT16


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_nodes(
    model, op_types: Iterable[str], include: list[str] | None, exclude: list[str], const_weight_only: bool
) -> list:
    """Nodes to quantize: of the given op types, matching `include` (if set) and not `exclude` (glob patterns).

    With const_weight_only, a MatMul/Gemm is taken only when one input is a weight (an initializer):
    activation x activation products (attention scores) stay in float.
    """
    op_types = set(op_types)
    initializers = {i.name for i in model.graph.initializer}
    chosen = []
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        if include is not None and not matches(node.name, include):
            continue
        if matches(node.name, exclude):
            continue
        if const_weight_only and node.op_type in ("MatMul", "Gemm") and not any(i in initializers for i in node.input):
            continue
        chosen.append(node)
    return chosen


def activation_inputs(model, nodes: list) -> list[str]:
    """The float, non-constant inputs of `nodes`: the tensors whose ranges calibration must find."""
    import onnx

    initializers = {i.name for i in model.graph.initializer}
    # Type inference needs the initializers' types, not their values: infer on a copy without weights.
    big = [i for i in model.graph.initializer if len(i.raw_data) > 1024 or i.data_location == 1]
    small = [i for i in model.graph.initializer if not (len(i.raw_data) > 1024 or i.data_location == 1)]
    weight_inputs = [onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in big]
    graph = onnx.helper.make_graph(
        list(model.graph.node), "types", [*model.graph.input, *weight_inputs], list(model.graph.output), small
    )
    skeleton = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=False)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.input})
    names: list[str] = []
    for node in nodes:
        for name in node.input:
            if not name or name in initializers or name in names:
                continue
            if types.get(name, 1) in FLOAT_TYPES:
                names.append(name)
    return names


def augmented_model_path(model_path: Path, tensors: list[str], work_dir: Path) -> Path:
    """A copy of the model that also outputs `tensors`.

    A model with external data gets only a new graph file beside its data file (the weights are
    neither loaded nor copied); a model with inline weights is copied into `work_dir`.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    data = model_path.read_bytes()
    model = onnx.ModelProto()
    model.ParseFromString(data)
    outputs = {o.name for o in model.graph.output}
    extra = onnx.ModelProto()
    for name in tensors:
        if name not in outputs:
            extra.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    if any(uses_external_data(i) for i in model.graph.initializer):
        path = model_path.with_name(f".{model_path.stem}.calibration.onnx")
    else:
        path = work_dir / "augmented.onnx"
    # Protobuf merges a message's repeated fields when two encodings are concatenated, so the original
    # bytes followed by a model holding only the new graph outputs parse as the augmented model:
    # no re-serialization of the weights (a third of the calibration time on a small model).
    with open(path, "wb") as fh:
        fh.write(data)
        fh.write(extra.SerializeToString())
    return path


@contextlib.contextmanager
def augmented_session(model_path: Path, tensors: list[str], scratch: Path, providers: list[str], arena: bool = True):
    """A session on a copy of the model that also outputs `tensors`; its files are removed afterwards.

    The caller drops the session (del) once done with it: it holds the model's weights.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    path = None
    try:
        path = augmented_model_path(model_path, tensors, scratch)
        yield make_session(path, providers, arena=arena)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if path is not None and path.parent != scratch:
            path.unlink(missing_ok=True)


# Largest batch of activations binned in the background while the next batch runs (so at most about
# twice this is held at once); a 1B-parameter model's 256-token window is above it and runs serially.
OVERLAP_MAX_BYTES = 192 * 1024 * 1024


def collect_histograms(
    model_path: Path,
    tensors: list[str],
    batches: list[dict[str, np.ndarray]],
    num_bins: int,
    providers: list[str],
    work_dir: Path,
    on_batch: Callable[[], None] = lambda: None,
) -> dict[str, TensorHistogram]:
    """Run every batch once; memory is the model plus one batch's activations plus O(bins) per tensor."""
    hists = {name: TensorHistogram(num_bins) for name in tensors}
    if not tensors:  # only weight-side nodes (a Gather) to quantize; ONNX Runtime reads [] as "every output"
        for _ in batches:
            on_batch()
        return hists
    with (
        augmented_session(model_path, tensors, work_dir / "calibration-model", providers, arena=False) as session,
        single_threaded_torch(),
    ):

        def fold(values: list[np.ndarray], mask: np.ndarray | None) -> None:
            for name, value in zip(tensors, values, strict=True):
                hists[name].update(real_tokens(value, mask))
            values.clear()
            release_freed_memory()
            on_batch()

        # Binning one batch while ONNX Runtime runs the next (both release the GIL) hides most of the
        # binning time, at the cost of holding two batches of activations: only when that is small.
        with ThreadPoolExecutor(max_workers=1) as binner:
            pending = None
            for feeds in batches:
                mask = feeds.get("attention_mask")
                values = session.run(tensors, complete_feeds(session, feeds))
                if pending is not None:
                    pending.result()
                    pending = None
                if sum(v.nbytes for v in values) <= OVERLAP_MAX_BYTES:
                    pending = binner.submit(fold, values, mask)
                else:
                    fold(values, mask)
                del values
            if pending is not None:
                pending.result()
    return hists


@contextlib.contextmanager
def single_threaded_torch():
    """Binning runs torch kernels beside ONNX Runtime's threads; torch's own pool would spin on the
    same cores (measured: inference 2.3x slower on the demo GLM), so it gets one thread meanwhile."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise); a no-op elsewhere.

    A batch's activations are hundreds of MB on a 1B model; returning them between batches keeps the
    next run's peak from stacking on top of heap fragments (measured: about 60-90 MB off the peak).
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 (glibc only)
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def real_tokens(value: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Drop padded positions when the tensor is laid out (batch, sequence, ...) like the mask."""
    if mask is None or mask.all() or value.ndim < 2 or value.shape[:2] != mask.shape:
        return value
    return value[mask.astype(bool)]
