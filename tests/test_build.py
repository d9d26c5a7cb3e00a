"""End-to-end builds of tiny models through the CLI: artifact layout, manifest, versions, exit codes."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glmopt.cli import app
from glmopt.fileutil import sha256_file
from recipes import decoder_recipe, encoder_recipe, write

runner = CliRunner()
# One stage cache for the tiny builds of the whole session: many tests change only late settings of the
# same tiny model, and the cache's own behaviour is tested with private caches (test_cache.py).
SHARED_CACHE = Path(tempfile.mkdtemp(prefix="glmopt-test-cache-"))
atexit.register(shutil.rmtree, SHARED_CACHE, True)


def build(recipe_path, artifacts, *extra, shared_cache: bool = True):
    """Build through the CLI; returns (exit code, the --json line, the CliRunner result)."""
    args = ["build", str(recipe_path), "--artifacts-dir", str(artifacts), "--json", "-q", *extra]
    if shared_cache and "--no-cache" not in extra and "--cache-dir" not in extra:
        args += ["--cache-dir", str(SHARED_CACHE)]
    result = runner.invoke(app, args)
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "{}"
    return result.exit_code, json.loads(last), result


@pytest.fixture(scope="module")
def glm_build(tiny_models, text_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("glm-build")
    recipe = write(root / "recipe.yaml", decoder_recipe(tiny_models["glm"], text_files))
    code, out, result = build(recipe, root / "artifacts")
    return code, out, result, root


def test_build_publishes_version_with_model_report_and_manifest(glm_build):
    code, out, result, root = glm_build
    assert code == 0, result.output
    artifact = root / "artifacts" / "tiny" / "1"
    assert out["artifact"] == str(artifact) and out["version"] == 1
    assert [s["name"] for s in out["stages"]] == ["export", "fuse", "quantize", "evaluate"]
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in out["stages"])
    names = {p.name for p in artifact.iterdir()}
    assert {
        "model.onnx",
        "config.json",
        "tokenizer.json",
        "recipe.yaml",
        "manifest.json",
        "report.md",
        "report.json",
        "calibration_ranges.json",
    } <= names
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["status"] == "ok"
    for rel, entry in manifest["files"].items():
        assert sha256_file(artifact / rel) == entry["sha256"], rel
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert {"torch", "onnxruntime", "transformers", "glmopt"} <= set(manifest["tools"])
    assert len(manifest["recipe"]["sha256"]) == 64 and len(manifest["source_model"]["sha256"]) == 64
    assert len(manifest["data"]["calibration"]["quantize"]["text_sha256"]) == 64
    assert len(manifest["data"]["evaluation"]["perplexity"]["sha256"]) == 64
    assert manifest["host"]["providers"] == ["CPUExecutionProvider"] and manifest["host"]["cpus"] >= 1


def test_report_has_a_row_per_stage_with_drop_against_reference(glm_build):
    _, out, _, root = glm_build
    report = json.loads((root / "artifacts" / "tiny" / "1" / "report.json").read_text())
    models = report["evaluation"]["models"]
    assert list(models) == ["reference", "export", "fuse", "quantize"]
    ref = models["reference"]["metrics"]["perplexity"]["value"]
    for result in models.values():
        value = result["metrics"]["perplexity"]["value"]
        assert result["drop_pct"]["perplexity"] == pytest.approx((value - ref) / ref * 100)
        assert result["size_bytes"] > 0 and result["latency"]["median_ms"] > 0
    # FP32 export matches PyTorch, so its perplexity is the reference's to float precision.
    assert models["export"]["metrics"]["perplexity"]["value"] == pytest.approx(ref, rel=1e-3)
    md = (root / "artifacts" / "tiny" / "1" / "report.md").read_text()
    assert "WITHIN BUDGET" in md and "| quantize |" in md
    assert out["metrics"]["perplexity"] == pytest.approx(models["quantize"]["metrics"]["perplexity"]["value"])


def test_quantized_model_is_int8_and_calibration_ranges_saved(glm_build):
    import onnx

    _, _, _, root = glm_build
    artifact = root / "artifacts" / "tiny" / "1"
    model = onnx.load(str(artifact / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8_weights
    ranges = json.loads((artifact / "calibration_ranges.json").read_text())
    assert ranges["method"] == "entropy" and ranges["tensors"]
    for entry in ranges["tensors"].values():
        lo, hi = entry["range"]
        assert entry["minmax"][0] <= lo <= hi <= entry["minmax"][1]


def test_second_build_gets_next_version_and_keeps_the_first(glm_build):
    code, _, _, root = glm_build
    first = (root / "artifacts" / "tiny" / "1" / "manifest.json").read_bytes()
    code, out, result = build(root / "recipe.yaml", root / "artifacts")
    assert code == 0, result.output
    assert out["version"] == 2
    assert (root / "artifacts" / "tiny" / "1" / "manifest.json").read_bytes() == first


def test_missed_budget_exits_3_and_publishes_version_marked_budget_missed(tiny_models, text_files, tmp_path):
    recipe = decoder_recipe(
        tiny_models["glm"], text_files, name="tight", budget=0.0, quantize={"method": "minmax", "per_channel": False}
    )
    code, out, result = build(write(tmp_path / "r.yaml", recipe), tmp_path / "a")
    assert code == 3, result.output
    assert out["within_budget"] is False and out["exit_code"] == 3
    manifest = json.loads((tmp_path / "a" / "tight" / "1" / "manifest.json").read_text())
    assert manifest["status"] == "budget-missed"
    assert "BUDGET MISSED" in (tmp_path / "a" / "tight" / "1" / "report.md").read_text()


def test_failed_numerics_check_exits_4_and_publishes_nothing(tiny_models, text_files, tmp_path):
    recipe = decoder_recipe(tiny_models["glm"], text_files, name="strict", export={"atol": 1e-12, "rtol": 0})
    code, out, result = build(write(tmp_path / "r.yaml", recipe), tmp_path / "a")
    assert code == 4, result.output
    assert "stage 'export' failed" in out["error"] and "exceeds atol 1e-12 + rtol 0" in out["error"]
    assert not [p for p in (tmp_path / "a" / "strict").iterdir()]


def test_interrupted_build_leaves_no_version(tiny_models, text_files, tmp_path, monkeypatch):
    from glmopt.stages import fuse

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fuse, "fuse_model", interrupted)
    recipe = write(tmp_path / "r.yaml", decoder_recipe(tiny_models["glm"], text_files, name="cut"))
    code, _, _ = build(recipe, tmp_path / "a", shared_cache=False)  # fuse must really run
    assert code == 130
    assert list((tmp_path / "a" / "cut").iterdir()) == []


@pytest.mark.parametrize("kind", ["glm4", "llama"])
def test_other_decoders_build(kind, tiny_models, text_files, tmp_path):
    code, out, result = build(write(tmp_path / "r.yaml", decoder_recipe(tiny_models[kind], text_files)), tmp_path)
    assert code == 0, result.output
    assert out["metrics"]["perplexity"] > 1


def test_encoder_build_reports_spearman_and_accuracy(tiny_models, text_files, tmp_path):
    code, out, result = build(write(tmp_path / "r.yaml", encoder_recipe(tiny_models["bert"], text_files)), tmp_path)
    assert code == 0, result.output
    assert -1 <= out["metrics"]["spearman"] <= 1 and 0 <= out["metrics"]["accuracy"] <= 1
    assert set(out["metrics"]["drop_pct"]) == {"spearman", "accuracy"}
    validate_report(tmp_path / "tiny-bert" / "1" / "report.json")


def test_artifacts_list_show_verify_and_tamper(glm_build):
    _, _, _, root = glm_build
    artifacts = root / "artifacts"
    listed = runner.invoke(app, ["artifacts", "list", "--artifacts-dir", str(artifacts), "--json"])
    rows = json.loads(listed.stdout.strip().splitlines()[-1])["artifacts"]
    assert [(r["name"], r["status"]) for r in rows][:1] == [("tiny", "ok")]
    assert "perplexity" in rows[0]["metrics"]
    shown = runner.invoke(app, ["artifacts", "show", "tiny/latest", "--artifacts-dir", str(artifacts), "--json"])
    manifest = json.loads(shown.stdout.strip().splitlines()[-1])
    assert manifest["version"] == max(r["version"] for r in rows)
    version_dir = artifacts / "tiny" / "1"
    assert runner.invoke(app, ["artifacts", "verify", str(version_dir)]).exit_code == 0
    model = version_dir / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    result = runner.invoke(app, ["artifacts", "verify", str(version_dir)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"verify failed: {model}: sha256 differs from the manifest"
    missing = runner.invoke(app, ["artifacts", "show", "nope", "--artifacts-dir", str(artifacts)])
    assert missing.exit_code == 2 and "no artifact named 'nope'" in missing.stderr


def test_triton_export_reads_io_from_the_graph(glm_build, tmp_path):
    _, _, _, root = glm_build
    result = runner.invoke(
        app,
        [
            "artifacts",
            "export",
            "tiny/2",
            str(tmp_path / "repo"),
            "--format",
            "triton",
            "--artifacts-dir",
            str(root / "artifacts"),
        ],
    )
    assert result.exit_code == 0, result.output
    config = (tmp_path / "repo" / "tiny" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config
    assert 'name: "input_ids"\n    data_type: TYPE_INT64\n    dims: [ -1, -1 ]' in config
    assert 'name: "logits"\n    data_type: TYPE_FP32\n    dims: [ -1, -1, 320 ]' in config
    assert (tmp_path / "repo" / "tiny" / "1" / "model.onnx").is_file()
    again = runner.invoke(
        app, ["artifacts", "export", "tiny/2", str(tmp_path / "repo"), "--artifacts-dir", str(root / "artifacts")]
    )
    assert again.exit_code == 2 and "already exists" in again.stderr


def validate_report(path):
    import jsonschema
    from conftest import REPO

    schema = json.loads((REPO / "glmopt" / "report" / "report.schema.json").read_text())
    jsonschema.validate(json.loads(path.read_text()), schema)


def test_reports_validate_against_the_committed_schema(glm_build, tmp_path):
    import jsonschema

    _, _, _, root = glm_build
    for report in (root / "artifacts").rglob("report.json"):
        validate_report(report)
    broken = json.loads((root / "artifacts" / "tiny" / "2" / "report.json").read_text())
    broken["evaluation"]["models"]["quantize"]["size_bytes"] = "big"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(jsonschema.ValidationError):
        validate_report(tmp_path / "broken.json")


def test_report_compare_shows_metric_and_recipe_changes(glm_build, tiny_models, text_files, tmp_path):
    _, _, _, root = glm_build
    artifacts = root / "artifacts"
    recipe = decoder_recipe(tiny_models["glm"], text_files, quantize={"method": "minmax"})
    code, out, result = build(write(tmp_path / "r.yaml", recipe), artifacts)
    assert code == 0, result.output
    version = out["version"]
    shown = runner.invoke(
        app, ["report", "compare", "tiny/1", f"tiny/{version}", "--artifacts-dir", str(artifacts), "--json"]
    )
    assert shown.exit_code == 0, shown.output
    diff = json.loads(shown.stdout.strip().splitlines()[-1])
    assert diff["recipe_changes"]["stages[quantize].method"] == {"a": "entropy", "b": "minmax"}, diff["recipe_changes"]
    ppl = diff["metrics"]["perplexity"]
    assert ppl["change"] == pytest.approx(ppl["b"] - ppl["a"])
    text = runner.invoke(app, ["report", "compare", "tiny/1", f"tiny/{version}", "--artifacts-dir", str(artifacts)])
    assert "stages[quantize].method: 'entropy' -> 'minmax'" in text.stdout
