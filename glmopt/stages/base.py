"""What every stage shares: the model handle it reads and writes, its context, and its record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from glmopt.models import LoadedModel


@dataclass
class ModelHandle:
    """A model between stages: a PyTorch model before export, an ONNX file after."""

    kind: Literal["torch", "onnx"]
    produced_by: str  # "reference" or a stage name
    torch: LoadedModel | None = None
    onnx_path: Path | None = None

    @property
    def loaded(self) -> LoadedModel:
        assert self.torch is not None, "stage needs the PyTorch model"
        return self.torch


@dataclass
class StageContext:
    work_dir: Path  # this stage's private folder inside the build's working folder
    base_dir: Path  # the recipe's folder: relative paths in the recipe resolve from here
    reference: LoadedModel  # the original model, as loaded from the source
    history: list[ModelHandle]  # every model so far, reference first
    providers: list[str]
    seed: int
    progress: Callable[..., Any]  # progress(total=N, desc=...) -> tqdm-like bar
    records: dict[str, dict] = field(default_factory=dict)  # details of the stages that ran so far
    location: str = ""  # where the stage stands, for errors: "<recipe file>: stages[2]"


@dataclass
class StageResult:
    model: ModelHandle | None  # None for stages that only measure (evaluate)
    details: dict[str, Any]
    # In-memory state later pipeline steps may reuse (the evaluator, the quantizer's ranges); never serialized.
    state: Any = None
