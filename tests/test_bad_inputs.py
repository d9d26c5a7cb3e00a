"""Every case of the bad-input corpus gets its exact one-line error, its exit code, and nothing published."""

from __future__ import annotations

import json

import pytest
from bad_inputs_cases import CASES
from typer.testing import CliRunner

from glmopt.cli import app

runner = CliRunner()


def test_corpus_is_large_and_ids_are_unique():
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_its_exact_error(case, tiny_models, text_files, tmp_path):
    recipe = case.write(tmp_path, tiny_models["glm"], text_files)
    artifacts = tmp_path / "artifacts"
    if case.command == "validate":
        args = ["validate", str(recipe), "--json"]
    else:
        args = ["build", str(recipe), "--artifacts-dir", str(artifacts), "--json", "-q"]
    result = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == case.exit_code, result.output
    error = json.loads(result.stdout.strip().splitlines()[-1])["error"]
    assert error == case.expected.format(recipe=recipe, tmp=tmp_path, model=tiny_models["glm"])
    assert "Traceback" not in result.output
    versions = [p for p in artifacts.rglob("*") if p.is_dir() and p.name.isdigit()] if artifacts.exists() else []
    assert versions == []
