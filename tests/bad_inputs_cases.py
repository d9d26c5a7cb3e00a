# ruff: noqa: E501 (exact messages, one per line)
"""A corpus of bad recipes and inputs, each with the exact one-line error a user must see.

Placeholders in `expected`: {recipe} the recipe file, {tmp} the case's folder, {model} the tiny model.
Together with the cases of test_recipe.py and test_inputs.py this is the bad-input corpus of the
README's "Bad input" section; test_bad_inputs.py runs every case through the CLI.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from recipes import decoder_recipe


@dataclass
class Case:
    id: str
    expected: str
    mutate: Callable[[dict, Path], dict] | None = None  # edits the valid tiny-GLM recipe
    text: str | bytes | None = None  # or: the recipe file's raw content
    files: dict[str, str | bytes] = field(default_factory=dict)  # extra files in the case folder
    command: str = "validate"  # "build" when the error needs the model or the data loaded
    exit_code: int = 2

    def write(self, tmp: Path, model: Path, data: dict[str, Path]) -> Path:
        for name, content in self.files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content if isinstance(content, bytes) else content.encode())
        path = tmp / "recipe.yaml"
        if self.text is not None:
            path.write_bytes(self.text if isinstance(self.text, bytes) else self.text.encode())
        else:
            recipe = self.mutate(decoder_recipe(model, data), tmp)
            path.write_text(yaml.safe_dump(json.loads(json.dumps(recipe, default=str)), sort_keys=False))
        return path


def setting(*path, value=None, delete=False):
    """A mutation that sets (or deletes) one key, the way a user would edit the YAML."""

    def mutate(recipe: dict, tmp: Path) -> dict:
        node = recipe
        for key in path[:-1]:
            node = node[key]
        if delete:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return recipe

    return mutate


def model_copy(edit: Callable[[Path], None]):
    """A mutation pointing the recipe at a copy of the tiny model that `edit` spoils."""

    def mutate(recipe: dict, tmp: Path) -> dict:
        src = Path(recipe["model"]["path"])
        dst = tmp / "model"
        if not dst.exists():
            shutil.copytree(src, dst)
        edit(dst)
        recipe["model"]["path"] = str(dst)
        return recipe

    return mutate


def _write(name: str, content: str):
    return lambda folder: (folder / name).write_text(content)


def _remove(*names: str):
    def edit(folder: Path) -> None:
        for name in names:
            (folder / name).unlink(missing_ok=True)

    return edit


def _truncate_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _calibration_data(data: dict):
    return setting("stages", 2, "calibration", "data", value=data)


def _eval_data(data: dict):
    return setting("stages", 3, "tasks", 0, "data", value=data)


CASES = [
    # The recipe file itself
    Case(
        "binary-file",
        "{recipe}: cannot read: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
        text=b"\xff\xfe\x00bad",
    ),
    Case(
        "tab-indented",
        "{recipe}: not valid YAML: line 3, column 1: found character '\\t' that cannot start any token",
        text="name: x\nmodel:\n\tpath: m\n",
    ),
    Case(
        "top-level-string",
        "{recipe}: expected a mapping of recipe keys (name, model, stages, ...) at the top level",
        text="just a sentence\n",
    ),
    Case(
        "duplicate-anchor-alias-bomb",
        "{recipe}: not valid YAML: line 2, column 4: found undefined alias 'c'",
        text="a: &a [1]\nb: *c\n",
    ),
    # Top-level keys
    Case(
        "name-empty",
        "{recipe}: name: must be 1-64 letters, digits, '.', '_' or '-', start with a letter or digit, and hold no '..'",
        setting("name", value=""),
    ),
    Case(
        "name-space",
        "{recipe}: name: must be 1-64 letters, digits, '.', '_' or '-', start with a letter or digit, and hold no '..'",
        setting("name", value="my model"),
    ),
    Case(
        "name-hidden",
        "{recipe}: name: must be 1-64 letters, digits, '.', '_' or '-', start with a letter or digit, and hold no '..'",
        setting("name", value=".hidden"),
    ),
    Case(
        "name-too-long",
        "{recipe}: name: must be 1-64 letters, digits, '.', '_' or '-', start with a letter or digit, and hold no '..'",
        setting("name", value="a" * 65),
    ),
    Case(
        "name-absolute",
        "{recipe}: name: must be 1-64 letters, digits, '.', '_' or '-', start with a letter or digit, and hold no '..'",
        setting("name", value="/etc/passwd"),
    ),
    Case("name-number", "{recipe}: name: Input should be a valid string (got 7)", setting("name", value=7)),
    Case("model-missing", "{recipe}: model: required key is missing", setting("model", delete=True)),
    Case(
        "model-path-number",
        "{recipe}: model.path: Input should be a valid string (got 5)",
        setting("model", "path", value=5),
    ),
    Case(
        "model-task-unknown",
        "{recipe}: model.task: Input should be 'causal-lm' or 'feature-extraction' (got 'translation')",
        setting("model", "task", value="translation"),
    ),
    Case("stages-mapping", "{recipe}: stages: Input should be a valid list", setting("stages", value={"export": {}})),
    Case(
        "stage-as-string",
        "{recipe}: stages[0]: Input should be a valid dictionary or object to extract fields from (got 'export')",
        setting("stages", 0, value="export"),
    ),
    Case(
        "seed-text",
        "{recipe}: seed: Input should be a valid integer, unable to parse string as an integer (got 'abc')",
        setting("seed", value="abc"),
    ),
    Case(
        "description-list", "{recipe}: description: Input should be a valid string", setting("description", value=["a"])
    ),
    # export / fuse
    Case(
        "opset-too-high",
        "{recipe}: stages[0].opset: Input should be less than or equal to 23 (got 99)",
        setting("stages", 0, "opset", value=99),
    ),
    Case(
        "atol-text",
        "{recipe}: stages[0].atol: Input should be a valid number, unable to parse string as a number (got 'tiny')",
        setting("stages", 0, "atol", value="tiny"),
    ),
    Case(
        "sample-shape-three",
        "{recipe}: stages[0].sample_shape: Tuple should have at most 2 items after validation, not 3",
        setting("stages", 0, "sample_shape", value=[1, 2, 3]),
    ),
    Case("fuse-unknown-key", "{recipe}: stages[1].level: unknown key", setting("stages", 1, "level", value=99)),
    # quantize
    Case(
        "per-channel-maybe",
        "{recipe}: stages[2].per_channel: Input should be a valid boolean, unable to interpret input (got 'maybe')",
        setting("stages", 2, "per_channel", value="maybe"),
    ),
    Case(
        "num-bins-zero",
        "{recipe}: stages[2].num_bins: Input should be greater than or equal to 128 (got 0)",
        setting("stages", 2, "num_bins", value=0),
    ),
    Case(
        "exclude-nodes-number",
        "{recipe}: stages[2].exclude_nodes: Input should be a valid list (got 5)",
        setting("stages", 2, "exclude_nodes", value=5),
    ),
    Case(
        "method-override-unknown",
        "{recipe}: stages[2].method_overrides.*: Input should be 'entropy', 'minmax', 'percentile' or 'auto' (got 'kl')",
        setting("stages", 2, "method_overrides", value={"*": "kl"}),
    ),
    Case(
        "sequence-length-tiny",
        "{recipe}: stages[2].calibration.sequence_length: Input should be greater than or equal to 8 (got 4)",
        setting("stages", 2, "calibration", "sequence_length", value=4),
    ),
    Case(
        "packing-unknown",
        "{recipe}: stages[2].calibration.packing: Input should be 'concatenate' or 'document' (got 'zip')",
        setting("stages", 2, "calibration", "packing", value="zip"),
    ),
    Case(
        "batch-size-zero",
        "{recipe}: stages[2].calibration.batch_size: Input should be greater than or equal to 1 (got 0)",
        setting("stages", 2, "calibration", "batch_size", value=0),
    ),
    Case(
        "calibration-files-empty",
        "{recipe}: stages[2].calibration.data.files: List should have at least 1 item after validation, not 0",
        _calibration_data({"files": []}),
    ),
    Case(
        "calibration-data-empty",
        "{recipe}: stages[2].calibration.data: give exactly one of 'builtin' or 'files'",
        _calibration_data({}),
    ),
    Case(
        "calibration-builtin-unknown",
        "{recipe}: stages[2].calibration.data.builtin: Input should be 'wikipedia', 'lee-news', 'lee-similarity' or 'bbc-news' (got 'imagenet')",
        _calibration_data({"builtin": "imagenet"}),
    ),
    Case(
        "calibration-both-sources",
        "{recipe}: stages[2].calibration.data: give exactly one of 'builtin' or 'files'",
        _calibration_data({"builtin": "wikipedia", "files": ["a.txt"]}),
    ),
    Case(
        "calibration-missing-file",
        "{recipe}: stages[2].calibration: data.files: {tmp}/nowhere.txt does not exist",
        _calibration_data({"files": ["nowhere.txt"]}),
    ),
    Case(
        "calibration-format-unknown",
        "{recipe}: stages[2].calibration.data.format: Input should be 'text', 'csv' or 'json' (got 'parquet')",
        _calibration_data({"files": ["c.txt"], "format": "parquet"}),
    ),
    Case(
        "calibration-file-is-folder",
        "{recipe}: stages[2].calibration: file {tmp} is a folder, not a calibration set file",
        setting("stages", 2, "calibration", value="."),
        command="build",
    ),
    Case(
        "calibration-csv-without-text-column",
        "{recipe}: stages[2].calibration: data: {tmp}/c.csv has no column 'text' (columns: ['body', 'label']); map yours with 'columns'",
        _calibration_data({"files": ["c.csv"]}),
        files={"c.csv": "body,label\nhello there,1\n"},
        command="build",
    ),
    Case(
        "calibration-too-few-documents",
        "{recipe}: stages[2].calibration: the data holds 1 documents; num_samples asks for 50",
        setting(
            "stages",
            2,
            "calibration",
            value={"data": {"files": ["c.txt"]}, "packing": "document", "num_samples": 50},
        ),
        files={"c.txt": "one document only\n"},
        command="validate",
    ),
    # evaluate
    Case(
        "tasks-empty",
        "{recipe}: stages[3].tasks: List should have at least 1 item after validation, not 0",
        setting("stages", 3, "tasks", value=[]),
    ),
    Case(
        "max-tokens-negative",
        "{recipe}: stages[3].tasks[0].max_tokens: Input should be greater than or equal to 64 (got -1)",
        setting("stages", 3, "tasks", 0, "max_tokens", value=-1),
    ),
    Case(
        "latency-runs-zero",
        "{recipe}: stages[3].latency.runs: Input should be greater than or equal to 1 (got 0)",
        setting("stages", 3, "latency", "runs", value=0),
    ),
    Case(
        "budget-over-1000",
        "{recipe}: stages[3].budgets.perplexity.max_drop_pct: Input should be less than or equal to 1000 (got 5000)",
        setting("stages", 3, "budgets", "perplexity", "max_drop_pct", value=5000),
    ),
    Case(
        "budget-nan",
        "{recipe}: stages[3].budgets.perplexity.max_drop_pct: Input should be less than or equal to 1000 (got nan)",
        setting("stages", 3, "budgets", "perplexity", "max_drop_pct", value=float("nan")),
    ),
    Case(
        "budget-without-limit",
        "{recipe}: stages[3].budgets.perplexity.max_drop_pct: required key is missing",
        setting("stages", 3, "budgets", "perplexity", value={}),
    ),
    Case(
        "fallback-trials-zero",
        "{recipe}: stages[3].fallback.max_trials: Input should be greater than or equal to 1 (got 0)",
        setting("stages", 3, "fallback", value={"max_trials": 0}),
    ),
    Case(
        "sensitivity-top-k-negative",
        "{recipe}: stages[3].sensitivity_top_k: Input should be greater than or equal to 0 (got -1)",
        setting("stages", 3, "sensitivity_top_k", value=-1),
    ),
    Case(
        "eval-missing-file",
        "{recipe}: stages[3].tasks[0].data.files: {tmp}/nowhere.txt does not exist",
        _eval_data({"files": ["nowhere.txt"]}),
    ),
    Case(
        "eval-json-wrong-column",
        "{recipe}: stages[3].tasks[0].data: {tmp}/e.jsonl has no column 'text' (columns: ['body']); map yours with 'columns'",
        _eval_data({"files": ["e.jsonl"], "format": "json"}),
        files={"e.jsonl": '{"body": "some text"}\n'},
    ),
    Case(
        "eval-empty-file",
        "{recipe}: stages[3].tasks[0].data.files: {tmp}/e.txt is empty",
        _eval_data({"files": ["e.txt"]}),
        files={"e.txt": ""},
    ),
    # The model folder
    Case(
        "model-folder-missing",
        "{recipe}: model.path: folder {tmp}/no-such-model does not exist",
        setting("model", "path", value="no-such-model"),
    ),
    Case(
        "model-path-is-file",
        "{recipe}: model.path: folder {recipe} is a file, not a model folder",
        setting("model", "path", value="recipe.yaml"),
        command="build",
    ),
    Case(
        "model-config-not-json",
        "{tmp}/model/config.json: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        model_copy(_write("config.json", "{not json")),
        command="build",
    ),
    Case(
        "model-config-without-type",
        "{tmp}/model/config.json: no 'model_type'; expected one of ['bert', 'glm', 'glm4', 'llama']",
        model_copy(_write("config.json", json.dumps({"hidden_size": 8}))),
        command="build",
    ),
    Case(
        "model-without-tokenizer",
        "{tmp}/model: could not load model: no usable tokenizer (tokenizer.json, or tokenizer.model / vocab files)",
        model_copy(_remove("tokenizer.json", "tokenizer_config.json")),
        command="build",
    ),
    Case(
        "model-truncated-weights",
        "{tmp}/model/model.safetensors: not a valid safetensors file (header of 2536 bytes in a file of 1000); copy or convert the weights again",
        model_copy(_truncate_weights),
        command="build",
    ),
    Case(
        "model-pickle-instead-of-safetensors",
        "{tmp}/model: weights are pickle files (pytorch_model.bin); glmopt loads only safetensors (convert with `model.save_pretrained(dir, safe_serialization=True)`)",
        model_copy(lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin")),
        command="build",
    ),
    # Quantization modes and activation smoothing
    Case(
        "static-quantize-without-calibration",
        "{recipe}: stages[2]: static quantization needs 'calibration' (a calibration set); or use mode weight_only",
        setting("stages", 2, "calibration", delete=True),
    ),
    Case(
        "weight-only-with-calibration",
        "{recipe}: stages[2]: mode weight_only uses no calibration; remove 'calibration'",
        setting("stages", 2, "mode", value="weight_only"),
    ),
    Case(
        "weight-only-three-bits",
        "{recipe}: stages[2].bits: Input should be 4 or 8 (got 3)",
        setting("stages", 2, "bits", value=3),
    ),
    Case(
        "smooth-after-export",
        "{recipe}: stages[1]: 'smooth' cannot come after 'export': smoothing edits the PyTorch weights, so it must come before 'export' (and after 'prune', so that its factors fit the pruned model)",
        lambda recipe, tmp: {
            **recipe,
            "stages": [
                recipe["stages"][0],
                {"stage": "smooth", "calibration": recipe["stages"][2]["calibration"]},
                *recipe["stages"][1:],
            ],
        },
    ),
    Case(
        "smooth-alpha-above-one",
        "{recipe}: stages[0].alpha: Input should be less than or equal to 1 (got 1.5)",
        lambda recipe, tmp: {
            **recipe,
            "stages": [
                {"stage": "smooth", "alpha": 1.5, "calibration": recipe["stages"][2]["calibration"]},
                *recipe["stages"],
            ],
        },
    ),
]
