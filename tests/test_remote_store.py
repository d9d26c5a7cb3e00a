"""Artifacts in an S3-compatible object store: a real server (moto's server mode) on loopback, no client mocks."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_build import build
from typer.testing import CliRunner

from glmopt.cli import app
from glmopt.remote import RemoteStore
from recipes import decoder_recipe, write

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

runner = CliRunner()
BUCKET = "glmopt-test"


@pytest.fixture(scope="module")
def s3_url():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield f"s3://{BUCKET}/artifacts"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(scope="module")
def published(s3_url, tiny_models, text_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    recipe = write(root / "r.yaml", decoder_recipe(tiny_models["glm"], text_files, name="remote"))
    code, out, result = build(recipe, s3_url)
    assert code == 0, result.output
    return root, recipe, out


def cli_json(*args):
    result = runner.invoke(app, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1]), result


def test_build_publishes_to_the_object_store(published, s3_url):
    _, _, out = published
    assert out["artifact"] == f"{s3_url}/remote/1" and out["version"] == 1
    store = RemoteStore(s3_url)
    manifest = store.read_manifest("remote", 1)
    assert manifest["version"] == 1 and manifest["status"] == "ok"
    listed = set(store.fs.find(f"{BUCKET}/artifacts/remote/1"))
    names = {p.rsplit("/", 1)[1] for p in listed}
    assert {"model.onnx", "manifest.json", "report.json", "report.html", "calibration_ranges.json"} <= names
    assert ".claim" not in names and set(manifest["files"]) | {"manifest.json"} == names


def test_list_show_and_verify_through_the_cli(published, s3_url):
    code, data, result = cli_json("artifacts", "list", "--artifacts-dir", s3_url)
    assert code == 0, result.output
    assert [(r["name"], r["version"], r["status"]) for r in data["artifacts"]] == [("remote", 1, "ok")]
    code, data, result = cli_json("artifacts", "show", "remote/latest", "--artifacts-dir", s3_url)
    assert code == 0 and data["version"] == 1 and data["path"] == f"{s3_url}/remote/1"
    code, data, result = cli_json("artifacts", "verify", f"{s3_url}/remote/1")
    assert code == 0 and data["ok"] is True, result.output


def test_one_changed_byte_fails_verify(published, s3_url, tiny_models, text_files, tmp_path):
    root, recipe, _ = published
    code, out, result = build(recipe, s3_url)  # a version of our own to spoil
    assert code == 0, result.output
    store = RemoteStore(s3_url)
    path = f"{BUCKET}/artifacts/remote/{out['version']}/model.onnx"
    data = bytearray(store.fs.cat_file(path))
    data[100] ^= 0x01
    store.fs.pipe_file(path, bytes(data))
    code, verdict, result = cli_json("artifacts", "verify", out["artifact"])
    assert code == 1 and verdict["ok"] is False
    assert verdict["problems"] == [f"{out['artifact']}/model.onnx: sha256 differs from the manifest"]


def test_unfinished_upload_is_invisible_and_its_number_never_reused(published, s3_url):
    _, recipe, _ = published
    store = RemoteStore(s3_url)
    claimed = max(store._numbers("remote")) + 1
    # What a build killed mid-upload leaves: a claim and some files, no manifest.
    store.fs.pipe_file(f"{BUCKET}/artifacts/remote/{claimed}/.claim", b"claimed\n")
    store.fs.pipe_file(f"{BUCKET}/artifacts/remote/{claimed}/model.onnx", b"partial")
    assert claimed not in store.versions("remote")
    code, data, _ = cli_json("artifacts", "show", "remote/latest", "--artifacts-dir", s3_url)
    assert code == 0 and data["version"] < claimed
    code, out, result = build(recipe, s3_url)
    assert code == 0, result.output
    assert out["version"] == claimed + 1


def test_concurrent_claims_get_distinct_numbers(published, s3_url):
    stores = [RemoteStore(s3_url) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        numbers = list(pool.map(lambda s: s._claim("race"), stores))
    assert len(set(numbers)) == 4


def test_triton_export_from_the_object_store(published, s3_url, tmp_path):
    code, data, result = cli_json("artifacts", "export", "remote/1", str(tmp_path / "repo"), "--artifacts-dir", s3_url)
    assert code == 0, result.output
    config = (tmp_path / "repo" / "remote" / "config.pbtxt").read_text()
    assert 'name: "remote"' in config and "input_ids" in config
    assert (tmp_path / "repo" / "remote" / "1" / "model.onnx").stat().st_size > 0


def test_the_claim_is_a_conditional_write_the_server_enforces(published, s3_url):
    store = RemoteStore(s3_url)
    key = f"{BUCKET}/artifacts/exclusive/1/.claim"
    with store.fs.open(key, "xb") as fh:
        fh.write(b"first\n")
    with pytest.raises(FileExistsError), store.fs.open(key, "xb") as fh:
        fh.write(b"second\n")
    assert store.fs.cat_file(key) == b"first\n"
