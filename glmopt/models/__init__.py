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
    if model_type not in ARCHITECTURES:
        raise InputError(
            f"{config_path}: model_type '{model_type}' is not supported; expected one of {sorted(ARCHITECTURES)}"
        )
    return model_type


def check_safetensors(folder: Path) -> None:
    """Refuse folders whose only weights are pickles: loading them could run arbitrary code."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    if pickles:
        raise InputError(
            f"{folder}: weights are pickle files ({', '.join(pickles)}); glmopt loads only safetensors "
            "(convert with `model.save_pretrained(dir, safe_serialization=True)`)"
        )
    raise InputError(f"{folder}: no model weights (*.safetensors) found")


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
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: could not load model: {str(exc).splitlines()[0]}") from None
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    from dataclasses import replace

    return LoadedModel(model=model, tokenizer=tokenizer, arch=replace(arch, task=task), folder=folder)
