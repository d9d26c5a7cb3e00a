"""Calibration sets: which text, how many samples, how long; and turning them into model inputs."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationError

from glmopt.data import DataSource, load_rows, rows_digest
from glmopt.errors import InputError, RecipeError
from glmopt.schema import StrictModel


class CalibrationSet(StrictModel):
    """A calibration set definition; the ready ones live in `calibration/*.yaml`."""

    description: str = ""
    data: DataSource
    num_samples: int = Field(64, ge=1, le=100_000)
    sequence_length: int = Field(256, ge=8, le=32_768)
    # concatenate: documents joined and cut into windows (language models);
    # document: one sample per document, truncated (encoders).
    packing: Literal["concatenate", "document"] = "concatenate"
    batch_size: int = Field(1, ge=1, le=1024)
    seed: int = 0


def load_calibration_file(path: Path) -> CalibrationSet:
    """Read a calibration set file; errors name that file and the field."""
    from glmopt.recipe import format_validation_error, read_yaml

    data = read_yaml(path)
    try:
        return CalibrationSet.model_validate(data)
    except ValidationError as exc:
        field, message = format_validation_error(exc)
        raise RecipeError(str(path), field, message) from None


def resolve_calibration(calibration: str | CalibrationSet, base_dir: Path) -> tuple[CalibrationSet, Path]:
    """The calibration set and the folder its relative paths resolve from (its own file's, if it has one)."""
    if isinstance(calibration, CalibrationSet):
        return calibration, base_dir
    path = (base_dir / calibration).resolve()
    return load_calibration_file(path), path.parent


def calibration_where(calibration: str | CalibrationSet, base_dir: Path, location: str, stage: str) -> str:
    """How errors name a calibration set: its own file, or the recipe field that holds it inline."""
    if isinstance(calibration, str):
        return str((base_dir / calibration).resolve())
    return f"{location}.calibration" if location else f"{stage}.calibration"


def _windows(texts: list[str], tokenizer, cal: CalibrationSet, where: str) -> list[list[int]]:
    needed = cal.num_samples * cal.sequence_length
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.extend(separator)
        if len(stream) >= needed:
            break
    if len(stream) < needed:
        raise InputError(
            f"{where}: the data gives {len(stream)} tokens; {cal.num_samples} samples x "
            f"{cal.sequence_length} tokens need {needed}"
        )
    n = cal.sequence_length
    return [stream[i * n : (i + 1) * n] for i in range(cal.num_samples)]


def check_document_count(cal: CalibrationSet, texts: list[str], where: str) -> None:
    """One sample per document: enough non-empty documents, known before any model work."""
    documents = sum(1 for t in texts if t.strip())
    if cal.packing == "document" and documents < cal.num_samples:
        raise InputError(f"{where}: the data holds {documents} documents; num_samples asks for {cal.num_samples}")


def _documents(texts: list[str], tokenizer, cal: CalibrationSet, where: str) -> list[list[int]]:
    check_document_count(cal, texts, where)
    return [
        tokenizer(t, truncation=True, max_length=cal.sequence_length)["input_ids"] for t in texts[: cal.num_samples]
    ]


def calibration_batches(
    cal: CalibrationSet, tokenizer, input_names: tuple[str, ...], base_dir: Path, where: str
) -> tuple[list[dict[str, np.ndarray]], dict]:
    """Model inputs for the calibration set, plus a description (with a hash of the text) for the manifest."""
    rows = load_rows(cal.data, base_dir, ("text",), f"{where}.data")
    texts = [r["text"] for r in rows if r["text"].strip()]
    random.Random(cal.seed).shuffle(texts)
    pack = _windows if cal.packing == "concatenate" else _documents
    samples = pack(texts, tokenizer, cal, where)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = []
    for start in range(0, len(samples), cal.batch_size):
        chunk = samples[start : start + cal.batch_size]
        width = max(len(s) for s in chunk)
        ids = np.full((len(chunk), width), pad, dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in input_names:
            feeds["position_ids"] = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
        if "token_type_ids" in input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        batches.append(feeds)
    info = {
        "data": cal.data.describe(),
        "samples": len(samples),
        "tokens": int(sum(len(s) for s in samples)),
        "text_sha256": rows_digest([{"text": t} for t in texts]),
    }
    return batches, info


def stage_calibration(
    calibration: str | CalibrationSet, base_dir: Path, location: str, stage: str, tokenizer, input_names
) -> tuple[list[dict[str, np.ndarray]], dict]:
    """A stage's calibration batches and their description, from its `calibration` setting."""
    cal, cal_base = resolve_calibration(calibration, base_dir)
    where = calibration_where(calibration, base_dir, location, stage)
    return calibration_batches(cal, tokenizer, input_names, cal_base, where)
