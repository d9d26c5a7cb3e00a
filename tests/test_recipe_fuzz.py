"""Property: no mutation of a valid recipe makes `glmopt validate` fail with anything but a one-line error."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from glmopt.cli import app
from recipes import decoder_recipe, encoder_recipe

runner = CliRunner()

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["../../etc", "/nonexistent/file.txt", "export", "quantize", "perplexity", "", "-1", "1e309"]),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)


def paths(node, prefix=()):
    """Every key path of a nested dict/list recipe."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from paths(value, (*prefix, i))


def apply(recipe, path, action, value):
    if not path:
        return value if action == "replace" else recipe
    parent = recipe
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "replace":
        parent[last] = value
    elif isinstance(parent[last], dict):  # "add": an unknown key beside the known ones
        parent[last]["unexpected_key"] = value
    elif isinstance(parent[last], list):
        parent[last].append(value)
    else:
        parent[last] = [parent[last], value]
    return recipe


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_recipe_mutations_never_give_a_traceback(data, tiny_models, text_files):
    kind = data.draw(st.sampled_from(["decoder", "encoder"]))
    base = (
        decoder_recipe(tiny_models["glm"], text_files)
        if kind == "decoder"
        else encoder_recipe(tiny_models["bert"], text_files)
    )
    recipe = json.loads(json.dumps(base, default=str))  # plain types, as YAML gives them
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        all_paths = list(paths(recipe)) if isinstance(recipe, dict | list) else [()]
        path = data.draw(st.sampled_from(all_paths))
        action = data.draw(st.sampled_from(["delete", "replace", "add"]))
        recipe = apply(copy.deepcopy(recipe), path, action, data.draw(VALUES))
    with tempfile.TemporaryDirectory() as tmp:
        recipe_file = Path(tmp) / "mutated.yaml"
        recipe_file.write_text(yaml.safe_dump(recipe, allow_unicode=True))
        result = runner.invoke(app, ["validate", str(recipe_file), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        error = json.loads(result.stdout.strip().splitlines()[-1])["error"]
        assert "\n" not in error and "Traceback" not in result.output
        assert str(recipe_file) in error or "/" in error  # names the recipe, or the data file at fault
