"""The artifact store: versioned folders under artifacts/<name>/<version>/, written atomically.

A version is assembled in a hidden staging folder beside the versions and renamed into place in one
step, so a reader (or a crash) never sees half a version. Renaming onto an existing, non-empty version
folder fails instead of replacing it, so a version is never overwritten, even by two concurrent builds.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from glmopt import __version__
from glmopt.errors import InputError, PublishError
from glmopt.fileutil import sha256_file, write_json

MANIFEST = "manifest.json"
TOOLS = ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "numpy", "datasets")


def tool_versions() -> dict[str, str]:
    versions = {"glmopt": __version__, "python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def host_info() -> dict:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
    }


def versions_of(name_dir: Path) -> list[int]:
    if not name_dir.is_dir():
        return []
    return sorted(int(p.name) for p in name_dir.iterdir() if p.is_dir() and p.name.isdigit())


@dataclass
class Staging:
    """A version being assembled; `publish` makes it visible."""

    name_dir: Path
    path: Path

    def add_file(self, src: Path, name: str | None = None) -> Path:
        dst = self.path / (name or src.name)
        shutil.copyfile(src, dst)
        return dst

    def file_hashes(self) -> dict[str, dict]:
        return {
            p.relative_to(self.path).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(self.path.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }

    def publish(self, manifest: dict, finalize: Callable[[int], None] = lambda version: None) -> tuple[int, Path]:
        """Rename into the next free version, after `finalize(version)` wrote the files that name it
        and the manifest recorded every file's hash."""
        while True:
            version = (versions_of(self.name_dir) or [0])[-1] + 1
            finalize(version)
            write_json(self.path / MANIFEST, {"version": version, **manifest, "files": self.file_hashes()})
            target = self.name_dir / str(version)
            try:
                os.rename(self.path, target)
            except OSError as exc:
                # Another build took this number between our look and our rename: take the next one.
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) or target.exists():
                    continue
                raise
            return version, target

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def start_version(artifacts_dir: Path, name: str) -> Staging:
    name_dir = (artifacts_dir / name).resolve()
    if artifacts_dir.resolve() not in name_dir.parents:
        raise InputError(f"artifact name '{name}' would leave the artifacts folder {artifacts_dir}")
    try:
        name_dir.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=".staging-", dir=name_dir))
    except OSError as exc:
        raise PublishError(f"{artifacts_dir}: cannot write artifacts there ({exc.strerror})") from None
    return Staging(name_dir, path)


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_manifest(version_dir: Path) -> dict:
    return json.loads((version_dir / MANIFEST).read_text())
