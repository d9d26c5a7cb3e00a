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
from glmopt.fileutil import hidden_prefix, remove_abandoned, sha256_file, write_json

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


def cpu_model() -> str:
    """The CPU's marketing name where the OS tells it (Linux /proc/cpuinfo), else the platform's word."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict:
    return {
        "cpu_model": cpu_model(),
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
        # What killed builds left behind (a staging or work folder whose process is gone) goes first.
        remove_abandoned(name_dir, ("staging", "work"))
        path = Path(tempfile.mkdtemp(prefix=hidden_prefix("staging"), dir=name_dir))
    except OSError as exc:
        raise PublishError(f"{artifacts_dir}: cannot write artifacts there ({exc.strerror})") from None
    return Staging(name_dir, path)


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_manifest(version_dir: Path) -> dict:
    return json.loads((version_dir / MANIFEST).read_text())


def version_row(name: str, version: int, path: str, read) -> dict:
    """A version's line in a listing: status and headline metrics from its manifest (`read()`)."""
    try:
        manifest = read()
    except (OSError, ValueError):
        return {"name": name, "version": version, "status": "unreadable", "path": path}
    metrics = {k: v for k, v in manifest.get("metrics", {}).items() if isinstance(v, int | float)}
    return {
        "name": name,
        "version": version,
        "status": manifest.get("status"),
        "created": manifest.get("created"),
        "metrics": metrics,
        "path": path,
    }


def list_versions(artifacts_dir: Path, name: str | None = None) -> list[dict]:
    """Every published version (oldest first), with its status and headline metrics."""
    if not artifacts_dir.is_dir():
        return []
    names = [name] if name else sorted(p.name for p in artifacts_dir.iterdir() if p.is_dir() and p.name[0] != ".")
    rows = []
    for n in names:
        for version in versions_of(artifacts_dir / n):
            folder = artifacts_dir / n / str(version)
            rows.append(version_row(n, version, str(folder), lambda f=folder: read_manifest(f)))
    return rows


def pick_version(where: str, spec: str, rows_for) -> tuple[str, int]:
    """NAME or NAME/latest (newest version with status ok) or NAME/VERSION -> (name, version).

    `rows_for(name)` lists the artifact's published versions (as `list_versions` does) in whichever store.
    """
    name, _, version = spec.partition("/")
    if not name or "/" in version or name.startswith("."):
        raise InputError(f"{where}: no artifact named '{name}'")
    rows = rows_for(name)
    if version in ("", "latest"):
        good = [r["version"] for r in rows if r["status"] == "ok"]
        if not good:
            raise InputError(f"{where}: artifact '{name}' has no version with status ok")
        return name, good[-1]
    if not version.isdigit() or int(version) not in {r["version"] for r in rows}:
        raise InputError(f"{where}: artifact '{name}' has no version '{version}'")
    return name, int(version)


def resolve_version(artifacts_dir: Path, spec: str) -> Path:
    """NAME (newest good), NAME/latest (newest good) or NAME/VERSION -> the version folder."""
    name = spec.partition("/")[0]
    if name and not (artifacts_dir / name).is_dir():
        raise InputError(f"{artifacts_dir}: no artifact named '{name}'")
    name, version = pick_version(str(artifacts_dir), spec, lambda n: list_versions(artifacts_dir, n))
    return artifacts_dir / name / str(version)


def verify_version(folder: Path) -> list[str]:
    """Problems found checking every file against the manifest's sha256; empty when all match."""
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        return [f"{folder / MANIFEST}: missing"]
    except ValueError as exc:
        return [f"{folder / MANIFEST}: not valid JSON ({exc})"]
    problems = []
    for rel, entry in manifest.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest")
    listed = set(manifest.get("files", {})) | {MANIFEST}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.relative_to(folder).as_posix() not in listed:
            problems.append(f"{path}: not listed in the manifest")
    return problems
