"""The stage cache: what a rebuild reuses, what it redoes, and that a bad entry is never used."""

from __future__ import annotations

import json
import os
import socket

import pytest
from test_build import build, validate_report

from glmopt.cache import StageCache
from glmopt.fileutil import sha256_file
from recipes import decoder_recipe, write


def cache_status(out: dict) -> dict[str, str | None]:
    return {s["name"]: s.get("cache") for s in out["stages"]}


def entries(artifacts) -> list[dict]:
    return StageCache(artifacts / ".cache" / "stages").entries()


@pytest.fixture(scope="module")
def first(tiny_models, text_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    recipe = write(root / "r.yaml", decoder_recipe(tiny_models["glm"], text_files, name="cached"))
    code, out, result = build(recipe, root / "a", shared_cache=False)
    assert code == 0, result.output
    return root, out


def test_first_build_stores_every_model_stage_and_records_lineage(first):
    root, out = first
    assert cache_status(out) == {"export": "stored", "fuse": "stored", "quantize": "stored", "evaluate": None}
    assert sorted(e["stage"] for e in entries(root / "a")) == ["export", "fuse", "quantize"]
    manifest = json.loads((root / "a" / "cached" / "1" / "manifest.json").read_text())
    lineage = {s["name"]: s for s in manifest["stages"]}
    assert lineage["quantize"]["output_sha256"] == sha256_file(root / "a" / "cached" / "1" / "model.onnx")
    assert all(len(lineage[s]["output_sha256"]) == 64 and lineage[s]["seconds"] >= 0 for s in ("export", "fuse"))


def test_changing_only_the_budget_redoes_only_evaluate(first, tiny_models, text_files):
    root, _ = first
    recipe = write(root / "r2.yaml", decoder_recipe(tiny_models["glm"], text_files, name="cached", budget=80.0))
    code, out, result = build(recipe, root / "a", shared_cache=False)
    assert code == 0, result.output
    assert cache_status(out) == {"export": "hit", "fuse": "hit", "quantize": "hit", "evaluate": None}
    v1, v2 = (root / "a" / "cached" / v for v in ("1", "2"))
    assert sha256_file(v2 / "model.onnx") == sha256_file(v1 / "model.onnx")
    assert (v2 / "calibration_ranges.json").read_text() == (v1 / "calibration_ranges.json").read_text()
    report = json.loads((v2 / "report.json").read_text())
    assert report["evaluation"]["budgets"][0]["max_drop_pct"] == 80.0
    validate_report(v2 / "report.json")
    assert "(cached; ran in" in (v2 / "report.md").read_text()
    assert len(entries(root / "a")) == 3


def test_changing_quantize_settings_reuses_export_and_fuse(first, tiny_models, text_files):
    root, _ = first
    recipe = decoder_recipe(tiny_models["glm"], text_files, name="cached", quantize={"method": "minmax"})
    code, out, result = build(write(root / "r3.yaml", recipe), root / "a", shared_cache=False)
    assert code == 0, result.output
    assert cache_status(out) == {"export": "hit", "fuse": "hit", "quantize": "stored", "evaluate": None}


def test_changed_calibration_text_at_the_same_path_is_a_miss(tiny_models, text_files, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text(text_files["calib"].read_text())
    data = {**text_files, "calib": calib}
    recipe = write(tmp_path / "r.yaml", decoder_recipe(tiny_models["glm"], data, name="data"))
    assert build(recipe, tmp_path / "a", shared_cache=False)[0] == 0
    calib.write_text("\n".join(reversed(calib.read_text().splitlines())) + "\n")
    code, out, result = build(recipe, tmp_path / "a", shared_cache=False)
    assert code == 0, result.output
    assert cache_status(out)["quantize"] == "stored" and cache_status(out)["fuse"] == "hit"


def test_corrupt_entry_is_rebuilt_never_used(first, tiny_models, text_files):
    root, _ = first
    cache = StageCache(root / "a" / ".cache" / "stages")
    entry = next(e for e in cache.entries() if e["stage"] == "fuse")
    model = cache.root / entry["key"] / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.unlink(model)  # a new file: the entry's old inode may still be linked into a published folder
    model.write_bytes(bytes(data))
    recipe = write(root / "r4.yaml", decoder_recipe(tiny_models["glm"], text_files, name="cached", budget=70.0))
    code, out, result = build(recipe, root / "a", shared_cache=False)
    assert code == 0, result.output
    assert cache_status(out)["fuse"] == "stored"
    # The rebuilt fuse output is the same model, so the cached quantize entry after it is still valid.
    assert cache_status(out)["quantize"] == "hit"
    assert (
        sha256_file(cache.root / entry["key"] / "model.onnx")
        == json.loads((cache.root / entry["key"] / "entry.json").read_text())["files"]["model.onnx"]["sha256"]
    )


def test_no_cache_runs_everything_and_writes_no_entry(tiny_models, text_files, tmp_path):
    recipe = write(tmp_path / "r.yaml", decoder_recipe(tiny_models["glm"], text_files, name="fresh"))
    code, out, result = build(recipe, tmp_path / "a", "--no-cache")
    assert code == 0, result.output
    assert set(cache_status(out).values()) == {None}
    assert entries(tmp_path / "a") == []


def test_cache_list_and_clear(first):
    from typer.testing import CliRunner

    from glmopt.cli import app

    root, _ = first
    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "list", "--artifacts-dir", str(root / "a"), "--json"])
    rows = json.loads(listed.stdout)["entries"]
    assert listed.exit_code == 0 and {r["stage"] for r in rows} == {"export", "fuse", "quantize"}
    assert all(r["bytes"] > 0 for r in rows)
    cleared = runner.invoke(app, ["cache", "clear", "--artifacts-dir", str(root / "a"), "--json"])
    assert cleared.exit_code == 0 and json.loads(cleared.stdout)["removed"] == len(rows)
    assert entries(root / "a") == []
    # Published versions are not the cache's: they stay and still verify.
    verify = runner.invoke(app, ["artifacts", "verify", str(root / "a" / "cached" / "1")])
    assert verify.exit_code == 0, verify.output


def test_folders_of_killed_builds_are_removed_and_live_ones_kept(tiny_models, text_files, tmp_path):
    host = socket.gethostname()
    name_dir = tmp_path / "a" / "sweep"
    name_dir.mkdir(parents=True)
    dead_pid = 2**22 + 12345  # above Linux's pid_max default: no process has it
    dead = [name_dir / f".staging-{host}-{dead_pid}-x", name_dir / f".work-{host}-{dead_pid}-y"]
    alive = name_dir / f".staging-{host}-{os.getpid()}-z"
    other_host = name_dir / f".staging-elsewhere-{dead_pid}-w"
    for folder in [*dead, alive, other_host]:
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"partial")
    recipe = write(tmp_path / "r.yaml", decoder_recipe(tiny_models["glm"], text_files, name="sweep"))
    code, _, result = build(recipe, tmp_path / "a")
    assert code == 0, result.output
    assert not any(d.exists() for d in dead)
    assert alive.exists() and other_host.exists()


def test_the_same_calibration_file_by_another_path_is_a_hit(tiny_models, text_files, tmp_path):
    import yaml

    cal = {"data": {"files": [str(text_files["calib"])]}, "num_samples": 8, "sequence_length": 32}
    (tmp_path / "cal.yaml").write_text(yaml.safe_dump(cal))
    outs = []
    for folder, reference in ((tmp_path / "a", "../cal.yaml"), (tmp_path / "b" / "c", "../../cal.yaml")):
        folder.mkdir(parents=True)
        recipe = decoder_recipe(tiny_models["glm"], text_files, name="moved")
        recipe["stages"][2]["calibration"] = reference
        code, out, result = build(write(folder / "r.yaml", recipe), tmp_path / "artifacts", shared_cache=False)
        assert code == 0, result.output
        outs.append(out)
    assert cache_status(outs[1])["quantize"] == "hit"
    assert outs[1]["stages"][2]["output_sha256"] == outs[0]["stages"][2]["output_sha256"]
