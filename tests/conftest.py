from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_model, training_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: make_tiny_model(kind, root / kind) for kind in ("glm", "glm4", "llama", "bert")}


@pytest.fixture(scope="session")
def text_files(tmp_path_factory) -> dict[str, Path]:
    """Calibration and evaluation text for tiny models: two disjoint draws of the tiny vocabulary."""
    import csv
    import random

    root = tmp_path_factory.mktemp("data")
    lines = training_text(600)
    calib, held_out = lines[:300], lines[300:]
    (root / "calib.txt").write_text("\n".join(calib) + "\n")
    (root / "eval.txt").write_text("\n".join(held_out) + "\n")
    rng = random.Random(0)
    with open(root / "pairs.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text_a", "text_b", "score"])
        for i in range(60):
            writer.writerow([held_out[i], held_out[i + 1], rng.random()])
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i, line in enumerate(held_out[:200]):
            label = "markets" if "markets" in line else "other"
            writer.writerow([line, label if i % 7 else ("markets" if label == "other" else "other")])
    return {p.stem: p for p in root.iterdir()}
