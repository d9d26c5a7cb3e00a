"""Bad inputs a recipe points at: one line naming file and field, exit 2, nothing published."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from glmopt.cli import app
from recipes import decoder_recipe, write

runner = CliRunner()


def build(recipe, artifacts):
    result = runner.invoke(app, ["build", str(recipe), "--artifacts-dir", str(artifacts), "--json", "-q"])
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1]), result


def assert_nothing_published(artifacts):
    assert not artifacts.exists() or not any(p.name.isdigit() for p in artifacts.rglob("*") if p.is_dir())


def test_missing_evaluation_file(tiny_models, text_files, tmp_path):
    recipe = decoder_recipe(tiny_models["glm"], text_files)
    recipe["stages"][3]["tasks"][0]["data"] = {"files": ["missing.txt"]}
    path = write(tmp_path / "r.yaml", recipe)
    code, out, _ = build(path, tmp_path / "a")
    assert code == 2
    assert out["error"] == f"{path}: stages[3].tasks[0].data.files: {tmp_path / 'missing.txt'} does not exist"
    assert_nothing_published(tmp_path / "a")


def test_wrong_dataset_column(tiny_models, text_files, tmp_path):
    (tmp_path / "cal.csv").write_text("body\nhello world\n")
    recipe = decoder_recipe(tiny_models["glm"], text_files)
    recipe["stages"][2]["calibration"]["data"] = {"files": ["cal.csv"]}
    path = write(tmp_path / "r.yaml", recipe)
    code, out, _ = build(path, tmp_path / "a")
    assert code == 2
    assert out["error"].startswith(f"{path}: stages[2].calibration: data: ")
    assert "has no column 'text' (columns: ['body']); map yours with 'columns'" in out["error"]


def test_column_mapping_is_honoured(tiny_models, text_files, tmp_path):
    from glmopt.data import DataSource, load_rows

    (tmp_path / "cal.csv").write_text("body\nhello world\nsecond row\n")
    rows = load_rows(DataSource(files=["cal.csv"], columns={"text": "body"}), tmp_path, ("text",), "x")
    assert rows == [{"text": "hello world"}, {"text": "second row"}]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("short.txt", "only a few words here\n", ["tokens; 8 samples x 32 tokens need 256"]),
        ("empty.txt", "", ["empty.txt", "stages[2].calibration: data"]),
    ],
    ids=["too-short", "empty"],
)
def test_unusable_calibration_data(name, text, expected, tiny_models, text_files, tmp_path):
    (tmp_path / name).write_text(text)
    recipe = decoder_recipe(tiny_models["glm"], text_files)
    recipe["stages"][2]["calibration"]["data"] = {"files": [name]}
    code, out, _ = build(write(tmp_path / "r.yaml", recipe), tmp_path / "a")
    assert code == 2
    assert all(words in out["error"] for words in expected), out["error"]
    assert_nothing_published(tmp_path / "a")


def test_calibration_and_evaluation_must_be_disjoint(tiny_models, text_files, tmp_path):
    recipe = decoder_recipe(tiny_models["glm"], text_files)
    recipe["stages"][3]["tasks"][0]["data"] = {"files": [str(text_files["calib"])]}
    code, out, _ = build(write(tmp_path / "r.yaml", recipe), tmp_path / "a")
    assert code == 2
    assert "documents also appear in the calibration data" in out["error"]


def test_missing_model_folder(tiny_models, text_files, tmp_path):
    recipe = decoder_recipe(tmp_path / "no-model", text_files)
    path = write(tmp_path / "r.yaml", recipe)
    code, out, _ = build(path, tmp_path / "a")
    assert code == 2
    assert out["error"] == f"{path}: model.path: folder {tmp_path / 'no-model'} does not exist"


def test_unwritable_artifacts_folder(tiny_models, text_files, tmp_path):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    code, out, _ = build(write(tmp_path / "r.yaml", decoder_recipe(tiny_models["glm"], text_files)), blocker)
    assert code == 4
    assert "cannot write artifacts there" in out["error"]
