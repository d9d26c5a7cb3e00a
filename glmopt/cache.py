"""The stage cache: a stage's output, kept under a key made of the stage, its settings and its input.

Keys chain: a stage's key hashes the key of the step before it (the source model's hash for the first
stage), its own settings, the content of the data its settings point at (calibration text), the
execution providers, the seed and the versions of glmopt and the libraries that shape the output.
So changing only a late stage (an evaluation budget) reuses everything before it.

An entry is a folder `<root>/<key>/` holding the stage's files and `entry.json` (its details, the state
later steps need, and every file's sha256). It is assembled in a hidden folder and renamed into place,
so a killed build leaves no entry, only a hidden folder the next build removes. Before reuse every
file is checked against its hash; an entry that fails is removed and the stage runs again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from glmopt.artifacts import tool_versions
from glmopt.fileutil import hidden_prefix, remove_abandoned, sha256_bytes, sha256_file

ENTRY = "entry.json"
ENTRY_FORMAT = 1
# Libraries whose versions change what a stage writes: a new version means new keys.
KEYED_TOOLS = ("glmopt", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "numpy")


def default_cache_dir(artifacts_dir: str | Path) -> Path:
    """Beside the artifacts (`.cache/stages`); for an object store, on this machine: entries are linked
    into a build's working folder, so they must live on a local filesystem."""
    from glmopt.remote import is_remote, local_path

    if is_remote(artifacts_dir):
        return Path.home() / ".cache" / "glmopt" / "stages"
    return local_path(artifacts_dir) / ".cache" / "stages"


def chain_key(previous: str, stage: str, settings: dict, data_digest: str, providers: list[str], seed: int) -> str:
    versions = {k: v for k, v in tool_versions().items() if k in KEYED_TOOLS}
    payload = {
        "format": ENTRY_FORMAT,
        "previous": previous,
        "stage": stage,
        "settings": settings,
        "data": data_digest,
        "providers": providers,
        "seed": seed,
        "versions": versions,
    }
    return sha256_bytes(json.dumps(payload, sort_keys=True, default=str).encode())


@dataclass
class CachedStage:
    """A verified entry: its files are linked into the stage's folder."""

    details: dict
    state: dict | None
    model_file: str | None  # the output model, relative to the stage folder
    files: dict[str, dict]
    seconds: float  # what the stage took when it ran


class StageCache:
    def __init__(self, root: Path):
        self.root = root

    def _entry_dir(self, key: str) -> Path:
        return self.root / key

    def restore(self, key: str, stage_dir: Path) -> CachedStage | None:
        """Link a verified entry's files into `stage_dir`; None on a miss or a corrupt entry (removed)."""
        entry_dir = self._entry_dir(key)
        if not entry_dir.is_dir():
            return None
        try:
            entry = json.loads((entry_dir / ENTRY).read_text())
            if entry.get("format") != ENTRY_FORMAT or entry.get("key") != key:
                raise ValueError("entry of another format or key")
            for rel, meta in entry["files"].items():
                path = entry_dir / rel
                if path.stat().st_size != meta["bytes"] or sha256_file(path) != meta["sha256"]:
                    raise ValueError(f"{rel}: sha256 differs")
        except (OSError, ValueError, KeyError, TypeError):
            self.discard(key)
            return None
        for rel in entry["files"]:
            _link_or_copy(entry_dir / rel, stage_dir / rel)
        return CachedStage(
            entry["details"], entry.get("state"), entry.get("model_file"), entry["files"], entry["seconds"]
        )

    def store(
        self,
        key: str,
        stage: str,
        stage_dir: Path,
        details: dict,
        state: dict | None,
        model_file: str | None,
        seconds: float,
    ) -> dict[str, dict]:
        """Keep the stage's files under `key`; returns their hashes. A failure to write only skips caching."""
        files = {
            p.relative_to(stage_dir).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(stage_dir.rglob("*"))
            if p.is_file()
        }
        entry_dir = self._entry_dir(key)
        if entry_dir.exists():
            return files
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_abandoned(self.root, ("entry",))
            tmp = self.root / f"{hidden_prefix('entry')}{key[:16]}"
            tmp.mkdir()
            for rel in files:
                _link_or_copy(stage_dir / rel, tmp / rel)
            entry = {
                "format": ENTRY_FORMAT,
                "key": key,
                "stage": stage,
                "created": time.time(),
                "seconds": seconds,
                "details": details,
                "state": state,
                "model_file": model_file,
                "files": files,
            }
            (tmp / ENTRY).write_text(json.dumps(entry, default=str))
            os.rename(tmp, entry_dir)  # atomic; fails if another build stored the same key first
            tmp = None
        except OSError:
            pass  # a full disk or a concurrent writer: the build goes on without this entry
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return files

    def discard(self, key: str) -> None:
        """Remove an entry: renamed aside first, so no reader sees it half-deleted."""
        entry_dir = self._entry_dir(key)
        aside = self.root / f"{hidden_prefix('entry')}discard-{key[:16]}"
        try:
            os.rename(entry_dir, aside)
        except OSError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    def entries(self) -> list[dict]:
        rows = []
        if not self.root.is_dir():
            return rows
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                entry = json.loads((path / ENTRY).read_text())
            except (OSError, ValueError):
                rows.append({"key": path.name, "stage": None, "bytes": _size(path)})
                continue
            rows.append(
                {
                    "key": path.name,
                    "stage": entry.get("stage"),
                    "created": entry.get("created"),
                    "seconds": entry.get("seconds"),
                    "bytes": sum(f["bytes"] for f in entry.get("files", {}).values()),
                }
            )
        return rows

    def clear(self) -> int:
        """Remove every entry; returns how many."""
        keys = [row["key"] for row in self.entries()]
        for key in keys:
            self.discard(key)
        remove_abandoned(self.root, ("entry",))
        return len(keys)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the filesystem allows (no copy of a large model), else a copy.

    Safe because no step writes into a file another stage produced: each writes its own new files.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
