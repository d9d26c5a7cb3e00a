"""Recipe validation: every bad recipe gets one line naming the file, the field and the expectation, exit 2."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from glmopt.cli import app
from glmopt.errors import RecipeError
from glmopt.recipe import load_recipe
from recipes import decoder_recipe, write

runner = CliRunner()
REPO_RECIPES = ["recipes/int8.yaml", "recipes/int8-minilm.yaml", "recipes/prune-int8.yaml"]


@pytest.mark.parametrize("path", REPO_RECIPES)
def test_ready_recipes_validate(path):
    from conftest import REPO

    result = runner.invoke(app, ["validate", str(REPO / path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["valid"] is True


def base(tiny_models, text_files):
    return decoder_recipe(tiny_models["glm"], text_files)


def mutate(recipe, path, value):
    node = recipe
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return recipe


DELETE = object()

# (mutation path, new value, expected field in the message, expected words in the message)
BAD = [
    (("extra",), 1, "extra", "unknown key"),
    (("name",), "../escape", "name", "hold no '..'"),
    (("name",), "a/b", "name", "letters, digits"),
    (("name",), DELETE, "name", "required key is missing"),
    (("model",), {"path": "x", "builtin": "smollm2-glm"}, "model", "exactly one of 'builtin' or 'path'"),
    (("model",), {"builtin": "gpt-17"}, "model.builtin", "unknown built-in model 'gpt-17'"),
    (("model", "trust_remote_code"), "yes please", "model.trust_remote_code", "valid boolean"),
    (("stages",), [], "stages", "at least 1 item"),
    (
        ("stages", 0, "stage"),
        "compile",
        "stages[0].stage",
        "unknown value 'compile'; expected one of 'prune', 'smooth', 'export'",
    ),
    (("stages", 0, "stage"), DELETE, "stages[0].stage", "required key is missing"),
    (("stages", 0, "opset"), "latest", "stages[0].opset", "valid integer"),
    (("stages", 0, "opset"), 9, "stages[0].opset", "greater than or equal to 18"),
    (("stages", 0, "atol"), -1, "stages[0].atol", "greater than or equal to 0"),
    (("stages", 0, "check_shape"), [2, 16], "stages[0]", "check_shape must differ"),
    (("stages", 1, "backend"), "tensorrt", "stages[1].backend", "'auto', 'onnxruntime', 'onnxscript' or 'none'"),
    (("stages", 2, "method"), "kl", "stages[2].method", "'entropy', 'minmax', 'percentile' or 'auto'"),
    (("stages", 2, "num_bins"), 1002, "stages[2].num_bins", "must be a power of two"),
    (("stages", 2, "calibration", "num_samples"), 0, "stages[2].calibration.num_samples", "greater than or equal to 1"),
    (("stages", 2, "op_types"), ["Conv"], "stages[2].op_types[0]", "'MatMul', 'Gemm' or 'Gather'"),
    (("stages", 3, "budgets"), {"bleu": {"max_drop_pct": 1}}, "stages[3]", "budgets for ['bleu'] name no task"),
    (
        ("stages", 3, "budgets", "perplexity", "max_drop_pct"),
        -5,
        "stages[3].budgets.perplexity.max_drop_pct",
        "greater than or equal to 0",
    ),
    (("stages", 3, "tasks", 0, "metric"), "bleu", "stages[3].tasks[0].metric", "unknown value 'bleu'"),
    (("stages", 3, "tasks", 0, "window"), "big", "stages[3].tasks[0].window", "valid integer"),
    (("seed",), -1, "seed", "greater than or equal to 0"),
]


@pytest.mark.parametrize(("path", "value", "field", "words"), BAD, ids=[str(b[0]) for b in BAD])
def test_bad_recipe_names_file_field_and_expectation(path, value, field, words, tiny_models, text_files, tmp_path):
    recipe_file = write(tmp_path / "bad.yaml", mutate(base(tiny_models, text_files), path, value))
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file)
    message = str(info.value)
    assert message.startswith(f"{recipe_file}: {field}: "), message
    assert words in message
    assert "\n" not in message


ORDER = [
    (["quantize", "export"], "stages[0]", "'quantize' needs an ONNX model: put an 'export' stage before it"),
    (["export", "fuse", "prune"], "stages[2]", "'prune' cannot come after 'fuse': pruning edits the PyTorch weights"),
    (["export", "quantize", "fuse"], "stages[2]", "'fuse' cannot come after 'quantize'"),
    (["export", "evaluate", "fuse"], "stages[2]", "'fuse' cannot come after 'evaluate'"),
    (["export", "export"], "stages[1]", "stage 'export' appears twice"),
    (["prune", "evaluate"], "stages", "a build must export the model"),
]


@pytest.mark.parametrize(("order", "field", "words"), ORDER, ids=["-".join(o[0]) for o in ORDER])
def test_stage_order_is_checked_with_the_reason(order, field, words, tiny_models, text_files, tmp_path):
    full = {
        s["stage"]: s
        for s in decoder_recipe(tiny_models["glm"], text_files, prune={"method": "magnitude", "sparsity": 0.5})[
            "stages"
        ]
    }
    recipe = {"name": "x", "model": {"path": "m"}, "stages": [full[name] for name in order]}
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path / "order.yaml", recipe))
    assert str(info.value).startswith(f"{tmp_path / 'order.yaml'}: {field}: ")
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "expected a mapping"),
        ("- a\n- b\n", "expected a mapping"),
        ("name: [unclosed\n", "not valid YAML: line"),
        ("name: !!python/object:os.system x\n", "not valid YAML"),
    ],
)
def test_unreadable_yaml(text, words, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert words in str(info.value)


def test_cli_bad_recipe_exits_2_with_one_line_and_writes_nothing(tiny_models, text_files, tmp_path):
    recipe = write(tmp_path / "bad.yaml", mutate(base(tiny_models, text_files), ("stages", 0, "opset"), "x"))
    artifacts = tmp_path / "artifacts"
    result = runner.invoke(app, ["build", str(recipe), "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith(f"error: {recipe}: stages[0].opset:")
    assert "Traceback" not in result.output
    assert not artifacts.exists()


def test_missing_recipe_file(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml: file not found" in result.stderr


def test_metric_must_suit_the_model(tiny_models, text_files, tmp_path):
    recipe = base(tiny_models, text_files)
    recipe["model"] = {"path": str(tiny_models["bert"])}
    result = runner.invoke(app, ["validate", str(write(tmp_path / "r.yaml", recipe))])
    assert result.exit_code == 2
    assert "stages[3].tasks[0].metric: 'perplexity' measures causal-lm models; this model is feature-extraction" in (
        result.stderr
    )


def test_missing_calibration_file_is_caught_by_validate(tiny_models, text_files, tmp_path):
    recipe = base(tiny_models, text_files)
    recipe["stages"][2]["calibration"] = "nowhere.yaml"
    result = runner.invoke(app, ["validate", str(write(tmp_path / "r.yaml", recipe))])
    assert result.exit_code == 2
    assert "stages[2].calibration: file" in result.stderr and "nowhere.yaml does not exist" in result.stderr


def test_bad_calibration_file_names_that_file(tiny_models, text_files, tmp_path):
    (tmp_path / "cal.yaml").write_text(yaml.safe_dump({"data": {"builtin": "wikipedia"}, "num_samples": "many"}))
    recipe = base(tiny_models, text_files)
    recipe["stages"][2]["calibration"] = "cal.yaml"
    result = runner.invoke(app, ["validate", str(write(tmp_path / "r.yaml", recipe))])
    assert result.exit_code == 2
    assert f"{tmp_path / 'cal.yaml'}: num_samples: " in result.stderr


def test_schema_command_prints_json_schema():
    result = runner.invoke(app, ["schema"])
    schema = json.loads(result.stdout)
    assert schema["additionalProperties"] is False and "stages" in schema["properties"]
