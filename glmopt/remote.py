"""Artifacts in an object store (S3 and whatever else fsspec reaches), with the local store's guarantees.

An object store has no rename, so a version cannot appear in one step the way a local folder does.
Instead a version becomes *visible* when its manifest.json exists, and the manifest is written last:
  1. claim the number: create `<name>/<v>/.claim` only if absent (a conditional write, If-None-Match);
     a build that loses the race takes the next number, so two builds never write into one version;
  2. upload every other file of the version;
  3. write manifest.json (with every file's sha256), then remove the claim.
A build killed before step 3 leaves files without a manifest: invisible to list, show and `latest`,
and its number is never reused. Readers (list, show, verify, export) see only manifested versions.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path

from glmopt.artifacts import MANIFEST, Staging, pick_version, start_version, version_row
from glmopt.errors import InputError, PublishError
from glmopt.fileutil import sha256_stream

CLAIM = ".claim"


def is_remote(location: str | Path) -> bool:
    """A URL with a scheme other than file:// (s3://bucket/prefix, gs://..., memory://...)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def local_path(location: str | Path) -> Path:
    text = str(location)
    return Path(text.removeprefix("file://")) if text.startswith("file://") else Path(text)


class RemoteStore:
    """The artifacts folder at an fsspec URL; `options` go to the filesystem (endpoint, credentials)."""

    def __init__(self, url: str, **options):
        import fsspec

        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError) as exc:
            raise InputError(f"{url}: cannot open this artifacts location ({exc})") from None
        self.url = url.rstrip("/")
        self.root = root.rstrip("/")

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def url_of(self, name: str, version: int) -> str:
        return f"{self.url}/{name}/{version}"

    def _numbers(self, name: str) -> dict[int, bool]:
        """Every claimed number of an artifact -> whether it is published (has a manifest)."""
        try:
            entries = self.fs.ls(self._path(name), detail=False, refresh=True)
        except FileNotFoundError:
            return {}
        numbers: dict[int, bool] = {}
        for entry in entries:
            base = posixpath.basename(entry.rstrip("/"))
            if base.isdigit():
                numbers[int(base)] = self.fs.exists(self._path(name, base, MANIFEST))
        return numbers

    def versions(self, name: str) -> list[int]:
        return sorted(v for v, published in self._numbers(name).items() if published)

    def names(self) -> list[str]:
        try:
            entries = self.fs.ls(self.root, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(
            posixpath.basename(e["name"].rstrip("/"))
            for e in entries
            if e["type"] == "directory" and not posixpath.basename(e["name"].rstrip("/")).startswith(".")
        )

    def _claim(self, name: str) -> int:
        """Take the next free number with a create-if-absent write; retry past numbers others took."""
        version = max(self._numbers(name), default=0) + 1
        for _ in range(1000):
            try:
                with self.fs.open(self._path(name, str(version), CLAIM), "xb") as fh:
                    fh.write(b"claimed\n")
                return version
            except FileExistsError:
                version += 1
        raise PublishError(f"{self.url}/{name}: could not claim a version number")

    def publish(self, staging: Path, name: str, finalize, manifest_for) -> tuple[int, str]:
        """Upload a locally assembled version. `finalize(version)` writes the files that name the
        version; `manifest_for(version)` returns the manifest, written last."""
        try:
            version = self._claim(name)
            finalize(version)
            manifest = manifest_for(version)
            for path in sorted(staging.rglob("*")):
                if path.is_file() and path.name != MANIFEST:
                    rel = path.relative_to(staging).as_posix()
                    self.fs.put_file(str(path), self._path(name, str(version), rel))
            with self.fs.open(self._path(name, str(version), MANIFEST), "wb") as fh:
                fh.write(json.dumps(manifest, indent=2).encode() + b"\n")
            self.fs.rm_file(self._path(name, str(version), CLAIM))
        except OSError as exc:
            raise PublishError(f"{self.url}/{name}: could not upload the artifact ({exc})") from None
        return version, self.url_of(name, version)

    def read_manifest(self, name: str, version: int) -> dict:
        with self.fs.open(self._path(name, str(version), MANIFEST), "rb") as fh:
            return json.loads(fh.read())

    def list_versions(self, name: str | None = None) -> list[dict]:
        return [
            version_row(n, v, self.url_of(n, v), lambda n=n, v=v: self.read_manifest(n, v))
            for n in ([name] if name else self.names())
            for v in self.versions(n)
        ]

    def resolve(self, spec: str) -> tuple[str, int]:
        """NAME, NAME/latest (newest good) or NAME/VERSION -> (name, version)."""
        return pick_version(self.url, spec, self.list_versions)

    def verify(self, name: str, version: int) -> list[str]:
        """Every file's sha256 against the manifest, read from the store; empty when all match."""
        where = self.url_of(name, version)
        try:
            manifest = self.read_manifest(name, version)
        except FileNotFoundError:
            return [f"{where}/{MANIFEST}: missing"]
        except ValueError as exc:
            return [f"{where}/{MANIFEST}: not valid JSON ({exc})"]
        problems = []
        base = self._path(name, str(version))
        for rel, entry in manifest.get("files", {}).items():
            path = posixpath.join(base, rel)
            if not self.fs.exists(path):
                problems.append(f"{where}/{rel}: missing")
                continue
            with self.fs.open(path, "rb") as fh:
                if sha256_stream(fh) != entry["sha256"]:
                    problems.append(f"{where}/{rel}: sha256 differs from the manifest")
        listed = set(manifest.get("files", {})) | {MANIFEST}
        for path in sorted(self.fs.find(base)):
            rel = posixpath.relpath(path, base)
            if rel not in listed:
                problems.append(f"{where}/{rel}: not listed in the manifest")
        return problems

    def download(self, name: str, version: int, dest: Path) -> Path:
        """A local copy of a version (for serving exports and report comparisons)."""
        dest.mkdir(parents=True, exist_ok=True)
        base = self._path(name, str(version))
        for path in self.fs.find(base):
            target = dest / posixpath.relpath(path, base)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(path, str(target))
        return dest


@dataclass
class RemoteStaging(Staging):
    """A version assembled in a local folder and published by upload to a RemoteStore."""

    store: RemoteStore | None = None
    name: str = ""

    def publish(self, manifest: dict, finalize=lambda version: None) -> tuple[int, str]:
        def manifest_for(version: int) -> dict:
            return {"version": version, **manifest, "files": self.file_hashes()}

        try:
            return self.store.publish(self.path, self.name, finalize, manifest_for)
        finally:
            self.discard()


def start_remote_version(store: RemoteStore, name: str) -> RemoteStaging:
    local = start_version(Path(tempfile.gettempdir()) / "glmopt-remote-staging", name)
    return RemoteStaging(local.name_dir, local.path, store=store, name=name)


def split_version_url(url: str) -> tuple[str, str, int]:
    """`s3://bucket/prefix/NAME/3` -> (`s3://bucket/prefix`, NAME, 3)."""
    root, name, version = url.rstrip("/").rsplit("/", 2) if url.count("/") >= 4 else ("", "", "")
    if not root or not version.isdigit():
        raise InputError(f"{url}: expected a version URL like s3://bucket/prefix/NAME/VERSION")
    return root, name, int(version)
