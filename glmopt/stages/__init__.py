"""The stage registry: recipe stage name -> config class and entry point, written out in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from glmopt.stages import evaluate, export, fuse, prune, quantize, smooth
from glmopt.stages.base import ModelHandle, StageContext, StageResult


@dataclass(frozen=True)
class StageSpec:
    name: str
    config: type
    run: Callable[..., StageResult]
    # What the stage reads: the PyTorch model (before export), an ONNX model (after), or every model so far.
    reads: str
    # Stages whose output is an ONNX file go through the stage cache; `save_state`/`load_state` carry the
    # in-memory state later steps need (load_state gets the saved dict, the config and the input model).
    cached: bool = False
    save_state: Callable[[object], dict] | None = None
    load_state: Callable[..., object] | None = None


STAGES: dict[str, StageSpec] = {
    "prune": StageSpec("prune", prune.PruneConfig, prune.run, "torch"),
    "smooth": StageSpec("smooth", smooth.SmoothConfig, smooth.run, "torch"),
    "export": StageSpec("export", export.ExportConfig, export.run, "torch", cached=True),
    "fuse": StageSpec("fuse", fuse.FuseConfig, fuse.run, "onnx", cached=True),
    "quantize": StageSpec(
        "quantize",
        quantize.QuantizeConfig,
        quantize.run,
        "onnx",
        cached=True,
        save_state=quantize.save_state,
        load_state=quantize.load_state,
    ),
    "evaluate": StageSpec("evaluate", evaluate.EvaluateConfig, evaluate.run, "all"),
}

__all__ = ["STAGES", "ModelHandle", "StageContext", "StageResult", "StageSpec"]
