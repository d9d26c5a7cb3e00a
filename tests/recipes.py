"""Recipes for tiny models, written as YAML files the way users write them."""

from __future__ import annotations

from pathlib import Path

import yaml


def decoder_recipe(model: Path, data: dict[str, Path], name: str = "tiny", budget: float = 50.0, **stage_overrides):
    stages = [
        {"stage": "export", **stage_overrides.get("export", {})},
        {"stage": "fuse", "backend": "onnxruntime", **stage_overrides.get("fuse", {})},
        {
            "stage": "quantize",
            "calibration": {"data": {"files": [str(data["calib"])]}, "num_samples": 8, "sequence_length": 32},
            **stage_overrides.get("quantize", {}),
        },
        {
            "stage": "evaluate",
            "tasks": [
                {"metric": "perplexity", "data": {"files": [str(data["eval"])]}, "window": 64, "max_tokens": 512}
            ],
            "latency": {"runs": 2, "warmup": 1, "sequence_length": 16},
            "budgets": {"perplexity": {"max_drop_pct": budget}},
        },
    ]
    if "prune" in stage_overrides:
        stages.insert(0, {"stage": "prune", **stage_overrides["prune"]})
    return {"name": name, "model": {"path": str(model)}, "stages": stages}


def encoder_recipe(model: Path, data: dict[str, Path], name: str = "tiny-bert"):
    return {
        "name": name,
        "model": {"path": str(model)},
        "stages": [
            {"stage": "export"},
            {"stage": "fuse", "backend": "onnxruntime"},
            {
                "stage": "quantize",
                "calibration": {
                    "data": {"files": [str(data["calib"])]},
                    "num_samples": 16,
                    "sequence_length": 32,
                    "packing": "document",
                    "batch_size": 4,
                },
            },
            {
                "stage": "evaluate",
                "tasks": [
                    {"metric": "spearman", "data": {"files": [str(data["pairs"])]}},
                    {"metric": "accuracy", "data": {"files": [str(data["labels"])]}, "max_samples": None},
                ],
                "latency": {"runs": 2, "warmup": 1, "sequence_length": 16},
                "budgets": {"spearman": {"max_drop_pct": 100}, "accuracy": {"max_drop_pct": 100}},
            },
        ],
    }


def write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
