"""Helpers shared by the bench scripts: export a model once, time a session, print a table."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from glmopt.models import load_model  # noqa: E402
from glmopt.models.builtin import resolve_builtin  # noqa: E402
from glmopt.onnx_utils import make_session, run_session  # noqa: E402
from glmopt.pipeline import progress_factory  # noqa: E402
from glmopt.stages.base import ModelHandle, StageContext  # noqa: E402
from glmopt.stages.export import ExportConfig, dummy_inputs  # noqa: E402
from glmopt.stages.export import run as export_run  # noqa: E402


def exported(builtin: str, work: Path | None = None, kv_cache: bool = True, loaded=None):
    """Load a built-in model and export it with glmopt's export stage; returns (loaded, onnx path, seconds)."""
    loaded = loaded or load_model(resolve_builtin(builtin))
    work = work or Path(tempfile.mkdtemp(prefix="glmopt-bench-"))
    ctx = StageContext(work, work, loaded, [], ["CPUExecutionProvider"], 0, progress_factory(False))
    start = time.perf_counter()
    result = export_run(ExportConfig(kv_cache=kv_cache), ctx, ModelHandle("torch", "reference", torch=loaded))
    return loaded, result.model.onnx_path, time.perf_counter() - start


def latency_ms(path: Path, loaded, batch: int, seq: int, runs: int = 10, threads: int = 2) -> float:
    session = make_session(path, ["CPUExecutionProvider"], threads=threads)
    feeds = dummy_inputs(loaded, batch, seq, pad_last=False)
    for _ in range(2):
        run_session(session, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_session(session, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def max_diff(a: Path, b: Path, loaded) -> float:
    feeds = dummy_inputs(loaded, 2, 33, seed=5)
    x = run_session(make_session(a, ["CPUExecutionProvider"]), feeds)[0]
    y = run_session(make_session(b, ["CPUExecutionProvider"]), feeds)[0]
    return float(np.abs(x - y).max())


def run_build(recipe: Path, artifacts: Path) -> tuple[float, dict, int]:
    """`glmopt build RECIPE --json` in a fresh process: (wall seconds, its --json result, the build's peak RSS).

    The build runs under a small Python parent whose only child it is, so that the parent's
    RUSAGE_CHILDREN peak is the build's own (the caller's other children would count otherwise).
    """
    import json
    import subprocess

    glmopt = Path(sys.executable).with_name("glmopt")
    parent = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:]); "
        "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)"
    )
    cmd = [str(glmopt), "build", str(recipe), "--artifacts-dir", str(artifacts), "--json", "-q"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", parent, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if not proc.stdout.strip():
        print(proc.stderr)
        raise SystemExit(1)
    peak = next(int(line.split()[1]) * 1024 for line in proc.stderr.splitlines() if line.startswith("peak_rss_kb"))
    return wall, json.loads(proc.stdout.strip().splitlines()[-1]), peak


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def peak_rss_bytes() -> int:
    """This process's own peak RSS.

    Linux's VmHWM, not getrusage's ru_maxrss: ru_maxrss survives fork and exec, so a worker started by
    a parent that once held a large model would report the parent's peak as its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
