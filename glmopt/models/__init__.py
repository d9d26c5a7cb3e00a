"""Model sources and per-architecture facts. Adding an architecture means adding one entry to ARCHITECTURES."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from glmopt.errors import InputError
from glmopt.models.base import Architecture, AttentionBlock, MlpBlock, Task
from glmopt.models.bert import BERT
from glmopt.models.decoders import GLM, GLM4, LLAMA

ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (GLM, GLM4, LLAMA, BERT)}

__all__ = ["ARCHITECTURES", "Architecture", "AttentionBlock", "LoadedModel", "MlpBlock", "Task", "load_model"]

# Files a serving team needs beside model.onnx to tokenize and interpret outputs.
SERVING_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "chat_template.jinja",
)


@dataclass
class LoadedModel:
    model: object  # a transformers PreTrainedModel, in eval mode
    tokenizer: object
    arch: Architecture
    folder: Path  # the source folder (tokenizer and config files are copied from here)


def read_model_type(folder: Path) -> str:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{config_path}: not valid JSON ({exc})") from None
    if model_type is None:
        raise InputError(f"{config_path}: no 'model_type'; expected one of {sorted(ARCHITECTURES)}")
    if model_type not in ARCHITECTURES:
        raise InputError(
            f"{config_path}: model_type '{model_type}' is not supported; expected one of {sorted(ARCHITECTURES)}"
        )
    return model_type


def check_safetensors(folder: Path) -> None:
    """Refuse folders whose only weights are pickles (loading them could run arbitrary code) or whose
    safetensors files are not whole (a cut download): each file's header must parse and its tensors fit."""
    weights = sorted(folder.glob("*.safetensors"))
    for path in weights:
        problem = _safetensors_problem(path)
        if problem:
            raise InputError(f"{path}: not a valid safetensors file ({problem}); copy or convert the weights again")
    if weights:
        return
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    if pickles:
        raise InputError(
            f"{folder}: weights are pickle files ({', '.join(pickles)}); glmopt loads only safetensors "
            "(convert with `model.save_pretrained(dir, safe_serialization=True)`)"
        )
    raise InputError(f"{folder}: no model weights (*.safetensors) found")


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing, read from its header alone (no weights loaded)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        header_len = int.from_bytes(head, "little")
        if header_len > size - 8:
            return f"header of {header_len} bytes in a file of {size}"
        try:
            header = json.loads(fh.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "header is not JSON"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    needed = 8 + header_len + max(ends, default=0)
    if needed > size:
        return f"truncated: the tensors need {needed} bytes, the file has {size}"
    return None


def load_model(folder: Path, task: Task | None = None, trust_remote_code: bool = False) -> LoadedModel:
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    arch = ARCHITECTURES[read_model_type(folder)]
    check_safetensors(folder)
    task = task or arch.task
    loader = AutoModelForCausalLM if task == "causal-lm" else AutoModel
    try:
        model = loader.from_pretrained(
            folder, dtype=torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "tokenizer" in first.lower():
            first = "no usable tokenizer (tokenizer.json, or tokenizer.model / vocab files)"
        raise InputError(f"{folder}: could not load model: {first}") from None
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    from dataclasses import replace

    return LoadedModel(model=model, tokenizer=tokenizer, arch=replace(arch, task=task), folder=folder)
