"""BERT-style encoders, exported as feature extractors (last hidden state)."""

from __future__ import annotations

from torch import nn

from glmopt.models.base import Architecture, MlpBlock


def _mlp_blocks(model: nn.Module) -> list[MlpBlock]:
    encoder = model.encoder if hasattr(model, "encoder") else model.bert.encoder
    return [MlpBlock(inputs=[(layer.intermediate.dense, 1)], output=layer.output.dense) for layer in encoder.layer]


# Attention-head pruning is left out for BERT on purpose: its config derives the head size from
# hidden_size / num_attention_heads, so a model with fewer heads could not be saved and reloaded.
BERT = Architecture(
    "bert",
    "feature-extraction",
    ("input_ids", "attention_mask", "token_type_ids"),
    ("last_hidden_state",),
    _mlp_blocks,
    None,
)
