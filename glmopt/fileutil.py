"""Small file helpers shared by the artifact store, the stage cache and model preparation."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

_CHUNK = 1 << 20


def sha256_stream(fh) -> str:
    """sha256 of what is left in a binary file object (a local file or an fsspec one), read in chunks."""
    digest = hashlib.sha256()
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_size(root: Path) -> int:
    if root.is_file():
        return root.stat().st_size
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def write_json(path: Path, data: object) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success rename it into place, on failure remove it.

    The rename is atomic on one filesystem, so `final` either does not exist or is complete.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def hidden_prefix(kind: str) -> str:
    """Name prefix of a hidden work folder owned by this process: `.<kind>-<host>-<pid>-`."""
    return f".{kind}-{socket.gethostname()}-{os.getpid()}-"


def remove_abandoned(folder: Path, kinds: tuple[str, ...]) -> list[Path]:
    """Remove hidden work folders left by killed processes of this host (their PID no longer runs).

    Folders of other hosts (a shared artifacts folder) or of running processes are left alone.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    host = socket.gethostname()
    for path in folder.iterdir():
        for kind in kinds:
            prefix = f".{kind}-{host}-"
            if not path.name.startswith(prefix):
                continue
            pid = path.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and not _running(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
