"""The recipe: a YAML file naming a model, the stages to run in order, evaluation data and budgets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from glmopt.errors import RecipeError
from glmopt.models.base import Task
from glmopt.models.builtin import BUILTIN_MODELS
from glmopt.schema import StrictModel
from glmopt.stages.evaluate import TASK_FOR_METRIC, EvaluateConfig
from glmopt.stages.export import ExportConfig
from glmopt.stages.fuse import FuseConfig
from glmopt.stages.prune import PruneConfig
from glmopt.stages.quantize import QuantizeConfig
from glmopt.stages.smooth import SmoothConfig

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

StageConfig = Annotated[
    PruneConfig | SmoothConfig | ExportConfig | FuseConfig | QuantizeConfig | EvaluateConfig,
    Field(discriminator="stage"),
]

# Where each stage may stand. Pruning and smoothing edit PyTorch weights, so they precede export (smoothing
# after pruning, so that its factors fit the pruned model); fusion and quantization rewrite the exported
# graph; evaluation measures everything before it, so it comes last.
STAGE_ORDER = ["prune", "smooth", "export", "fuse", "quantize", "evaluate"]
NEEDS = {"fuse": "export", "quantize": "export"}


class ModelSource(StrictModel):
    builtin: str | None = Field(None, description=f"one of {sorted(BUILTIN_MODELS)}")
    path: str | None = Field(None, description="a local Hugging Face model folder (safetensors)")
    task: Task | None = Field(None, description="causal-lm or feature-extraction; default from the model type")
    trust_remote_code: bool = Field(False, description="run Python code shipped with the model folder")

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, value: str | None) -> str | None:
        if value is not None and value not in BUILTIN_MODELS:
            raise ValueError(f"unknown built-in model '{value}'; expected one of {sorted(BUILTIN_MODELS)}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("give exactly one of 'builtin' or 'path'")
        return self


class Recipe(StrictModel):
    name: str = Field(..., description="artifact name: letters, digits, '.', '_' and '-'")
    description: str = ""
    model: ModelSource
    stages: list[StageConfig] = Field(..., min_length=1)
    seed: int = Field(0, ge=0)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value) or ".." in value:
            raise ValueError(
                "must be 1-64 letters, digits, '.', '_' or '-', start with a letter or digit, and hold no '..'"
            )
        return value

    def stage_names(self) -> list[str]:
        return [s.stage for s in self.stages]


class LoadedRecipe:
    """A validated recipe plus where it came from (relative paths resolve from its folder)."""

    def __init__(self, recipe: Recipe, path: Path, text: str):
        self.recipe = recipe
        self.path = path
        self.base_dir = path.parent
        self.text = text


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(str(path), "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(str(path), "", f"cannot read: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(str(path), "", f"not valid YAML: {where}{problem}") from None


UNION_BRANCHES = {"str", "int", "float", "bool", "list", "dict", "none", "CalibrationSet"}


def _field_path(loc: tuple) -> str:
    """Pydantic's location as a recipe author writes it: `stages[2].calibration.num_samples`.

    Discriminator tags (right after a list index) and union branch names are pydantic's bookkeeping,
    not keys in the file, so they are left out.
    """
    out = ""
    previous = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (
            (isinstance(previous, int) and part in (*STAGE_ORDER, *TASK_FOR_METRIC))
            or part in UNION_BRANCHES
            or "[" in str(part)
        ):
            pass
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out


def format_validation_error(exc: ValidationError) -> tuple[str, str]:
    """The first error as (field path, what was expected), in words a recipe author can act on."""
    # When a value fits no branch of a union, the deepest error is the one about the author's intent.
    err = max(exc.errors(include_url=False), key=lambda e: len(e["loc"]))
    field = _field_path(err["loc"])
    kind = err["type"]
    given = err.get("input")
    if kind == "extra_forbidden":
        return field, "unknown key"
    if kind == "missing":
        return field, "required key is missing"
    ctx = err.get("ctx", {})
    key = str(ctx.get("discriminator", "")).strip("'")
    if kind == "union_tag_invalid":
        return f"{field}.{key}", f"unknown value {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"{field}.{key}", f"required key is missing; expected one of {ctx.get('expected_tags')}"
    message = err["msg"].removeprefix("Value error, ")
    if given is not None and not isinstance(given, dict | list) and kind != "value_error":
        message += f" (got {given!r})"
    return field, message


def check_stage_order(recipe: Recipe, file: str) -> None:
    names = recipe.stage_names()
    seen: set[str] = set()
    last_rank = -1
    for i, name in enumerate(names):
        if name in seen:
            raise RecipeError(file, f"stages[{i}]", f"stage '{name}' appears twice; each stage runs at most once")
        rank = STAGE_ORDER.index(name)
        if rank < last_rank:
            previous = names[i - 1]
            why = {
                "prune": "pruning edits the PyTorch weights, so it must come before 'export' "
                "(and calibration must see the pruned model's activations)",
                "smooth": "smoothing edits the PyTorch weights, so it must come before 'export' "
                "(and after 'prune', so that its factors fit the pruned model)",
                "export": "'export' produces the ONNX model the later stages rewrite",
                "fuse": "fusion must see the FP32 graph; fusing after quantization would skip the QDQ pattern",
                "quantize": "quantization must be the last rewrite of the graph before evaluation",
            }.get(name, "stages run in the order " + " -> ".join(STAGE_ORDER))
            raise RecipeError(file, f"stages[{i}]", f"'{name}' cannot come after '{previous}': {why}")
        last_rank = rank
        need = NEEDS.get(name)
        if need and need not in seen:
            raise RecipeError(file, f"stages[{i}]", f"'{name}' needs an ONNX model: put an '{need}' stage before it")
        seen.add(name)
    if "evaluate" in names and names[-1] != "evaluate":
        raise RecipeError(file, f"stages[{names.index('evaluate')}]", "'evaluate' must be the last stage")
    if "export" not in names:
        raise RecipeError(file, "stages", "a build must export the model: add an 'export' stage")


def check_task_metrics(recipe: Recipe, task: str, file: str) -> None:
    for i, stage in enumerate(recipe.stages):
        if isinstance(stage, EvaluateConfig):
            for j, t in enumerate(stage.tasks):
                if TASK_FOR_METRIC[t.metric] != task:
                    raise RecipeError(
                        file,
                        f"stages[{i}].tasks[{j}].metric",
                        f"'{t.metric}' measures {TASK_FOR_METRIC[t.metric]} models; this model is {task}",
                    )


def load_recipe(path: Path) -> LoadedRecipe:
    """Read and validate a recipe; any problem raises RecipeError naming the file and field."""
    data = read_yaml(path)
    file = str(path)
    if not isinstance(data, dict):
        raise RecipeError(file, "", "expected a mapping of recipe keys (name, model, stages, ...) at the top level")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        field, message = format_validation_error(exc)
        raise RecipeError(file, field, message) from None
    check_stage_order(recipe, file)
    return LoadedRecipe(recipe, path, path.read_text(encoding="utf-8"))


def recipe_json_schema() -> dict:
    return Recipe.model_json_schema()
