"""What the pipeline needs to know about one model architecture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

Task = Literal["causal-lm", "feature-extraction"]


@dataclass
class MlpBlock:
    """One feed-forward block: input projections whose rows are neurons, an output projection whose columns are.

    `inputs` pairs each input projection with how many stacked chunks of `intermediate` rows it holds
    (GLM's fused gate_up_proj holds two: gate first, then up).
    """

    inputs: list[tuple[nn.Linear, int]]
    output: nn.Linear


@dataclass
class AttentionBlock:
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class Architecture:
    """Per-architecture facts: export I/O names and where the prunable structures are."""

    model_type: str
    task: Task
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    mlp_blocks: Callable[[nn.Module], list[MlpBlock]]
    attention_blocks: Callable[[nn.Module], list[AttentionBlock]] | None = None
    # Config keys that structured pruning rewrites.
    intermediate_key: str = "intermediate_size"
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def is_decoder(self) -> bool:
        return self.task == "causal-lm"
