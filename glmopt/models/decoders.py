"""Llama-style decoders: `glm`, `glm4` and `llama` share their attention layout and differ in the MLP."""

from __future__ import annotations

from torch import nn

from glmopt.models.base import Architecture, AttentionBlock, MlpBlock

DECODER_INPUTS = ("input_ids", "attention_mask", "position_ids")
DECODER_OUTPUTS = ("logits",)


def _layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def _attention_blocks(model: nn.Module) -> list[AttentionBlock]:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return [
        AttentionBlock(
            q=layer.self_attn.q_proj,
            k=layer.self_attn.k_proj,
            v=layer.self_attn.v_proj,
            o=layer.self_attn.o_proj,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=kv,
            head_dim=head_dim,
        )
        for layer in _layers(model)
    ]


def _fused_mlp_blocks(model: nn.Module) -> list[MlpBlock]:
    # GLM and GLM-4 fuse gate and up projections into one Linear: rows [gate; up].
    return [MlpBlock(inputs=[(layer.mlp.gate_up_proj, 2)], output=layer.mlp.down_proj) for layer in _layers(model)]


def _split_mlp_blocks(model: nn.Module) -> list[MlpBlock]:
    return [
        MlpBlock(inputs=[(layer.mlp.gate_proj, 1), (layer.mlp.up_proj, 1)], output=layer.mlp.down_proj)
        for layer in _layers(model)
    ]


GLM = Architecture("glm", "causal-lm", DECODER_INPUTS, DECODER_OUTPUTS, _fused_mlp_blocks, _attention_blocks)
GLM4 = Architecture("glm4", "causal-lm", DECODER_INPUTS, DECODER_OUTPUTS, _fused_mlp_blocks, _attention_blocks)
LLAMA = Architecture("llama", "causal-lm", DECODER_INPUTS, DECODER_OUTPUTS, _split_mlp_blocks, _attention_blocks)
