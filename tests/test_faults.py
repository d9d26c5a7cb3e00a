"""Builds that meet faults: concurrent builds, SIGKILL at several points, a full disk, no network."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

from test_build import build

from glmopt.artifacts import verify_version, versions_of
from glmopt.cache import StageCache
from recipes import decoder_recipe, write


def start_build(recipe, artifacts) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "glmopt.cli", "build", str(recipe), "--artifacts-dir", str(artifacts), "--json", "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def visible_versions_verify(name_dir) -> list[int]:
    versions = versions_of(name_dir)
    for v in versions:
        assert verify_version(name_dir / str(v)) == [], f"version {v} is not whole"
    return versions


def cache_entries_verify(artifacts, tmp_path) -> int:
    cache = StageCache(artifacts / ".cache" / "stages")
    rows = cache.entries()
    for i, row in enumerate(rows):
        assert row["stage"] is not None, "unreadable cache entry"
        assert cache.restore(row["key"], tmp_path / f"check-{i}") is not None, f"corrupt entry {row['key']}"
    return len(rows)


def test_two_builds_at_once_get_distinct_whole_versions(tiny_models, text_files, tmp_path):
    recipe = write(tmp_path / "r.yaml", decoder_recipe(tiny_models["glm"], text_files, name="twins"))
    procs = [start_build(recipe, tmp_path / "a") for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    versions = sorted(json.loads(o[0].strip().splitlines()[-1])["version"] for o in outs)
    assert versions == [1, 2]
    assert visible_versions_verify(tmp_path / "a" / "twins") == [1, 2]
    assert [p.name for p in (tmp_path / "a" / "twins").iterdir() if p.name.startswith(".")] == []
    assert cache_entries_verify(tmp_path / "a", tmp_path) == 3


def _count_entries(artifacts) -> int:
    root = artifacts / ".cache" / "stages"
    return len([p for p in root.iterdir() if not p.name.startswith(".")]) if root.is_dir() else 0


def _has_hidden(name_dir, kind: str) -> bool:
    return name_dir.is_dir() and any(p.name.startswith(f".{kind}-") for p in name_dir.iterdir())


# Moments to kill a build at, each a condition on what it has written so far.
KILL_POINTS = {
    "loading the model": lambda a, n: _has_hidden(n, "work"),
    "after the export entry": lambda a, n: _count_entries(a) >= 1,
    "after the fuse entry": lambda a, n: _count_entries(a) >= 2,
    "while evaluating": lambda a, n: _count_entries(a) >= 3,
}


def test_sigkill_at_any_point_leaves_no_partial_version_or_cache_entry(tiny_models, text_files, tmp_path):
    artifacts = tmp_path / "a"
    name_dir = artifacts / "killed"
    recipe = write(tmp_path / "r.yaml", decoder_recipe(tiny_models["glm"], text_files, name="killed"))
    killed = []
    for point, reached in KILL_POINTS.items():
        proc = start_build(recipe, artifacts)
        deadline = time.monotonic() + 300
        while proc.poll() is None and not reached(artifacts, name_dir) and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed.append(point)
        proc.communicate(timeout=60)
        # Whatever the moment: every visible version and every cache entry is whole.
        visible_versions_verify(name_dir)
        cache_entries_verify(artifacts, tmp_path / point.replace(" ", "-"))
    assert len(killed) >= 3, killed  # the moments were really reached with the build still running
    code, out, result = build(recipe, artifacts, shared_cache=False)
    assert code == 0, result.output
    assert out["version"] == max(versions_of(name_dir))
    # The next build removed what the killed ones left: no hidden staging or work folder remains.
    assert not _has_hidden(name_dir, "staging") and not _has_hidden(name_dir, "work")
    cache_root = artifacts / ".cache" / "stages"
    assert [p.name for p in cache_root.iterdir() if p.name.startswith(".")] == []


def test_full_disk_while_publishing_is_a_one_line_exit_4(tiny_models, text_files, tmp_path, monkeypatch):
    import glmopt.artifacts

    def no_space(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(glmopt.artifacts.shutil, "copyfile", no_space)
    recipe = write(tmp_path / "r.yaml", decoder_recipe(tiny_models["glm"], text_files, name="full"))
    code, out, result = build(recipe, tmp_path / "a")
    assert code == 4, result.output
    assert "No space left on device" in out["error"] and "\n" not in out["error"]
    assert "Traceback" not in result.output
    assert list((tmp_path / "a" / "full").iterdir()) == []


def test_a_full_build_reaches_no_network(tiny_models, text_files, tmp_path, monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError(errno.ENETUNREACH, "network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    recipe = write(tmp_path / "r.yaml", decoder_recipe(tiny_models["glm"], text_files, name="offline"))
    code, _, result = build(recipe, tmp_path / "a", "--no-cache")  # every stage really runs
    assert code == 0, result.output
    assert attempts == []
