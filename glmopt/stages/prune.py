"""prune: on the PyTorch model, before export.

- magnitude: zero the smallest weights of every Linear in the transformer blocks to a target sparsity
  (permanent: the zeros are written into the weights, no masks or hooks remain).
- structured: remove whole MLP neurons and whole attention KV groups (a KV head and the query heads
  sharing it), so matrices really shrink; the config is updated so the model saves, reloads and
  exports at its new size. Ranking `activation` (the default) scores a neuron by the L2 norm of its
  activation over calibration samples times the norm of its output weights; ranking `weight` by
  weight norms alone. Weight norms mislead on real LMs: on the demo model, removing the 6% of MLP
  neurons with the lowest weight norm took perplexity from 32 to 6677 (random neurons: 58), while
  the activation-aware ranking gave 40.
"""

from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field, model_validator

from glmopt.calibrate.dataset import CalibrationSet, stage_calibration
from glmopt.errors import StageError
from glmopt.models import LoadedModel
from glmopt.schema import StrictModel
from glmopt.stages.base import ModelHandle, StageContext, StageResult


class PruneConfig(StrictModel):
    stage: Literal["prune"] = "prune"
    method: Literal["magnitude", "structured"]
    sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="magnitude: fraction of block weights set to zero")
    scope: Literal["layer", "global"] = Field("layer", description="magnitude: threshold per matrix or one overall")
    mlp_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="structured: fraction of MLP neurons removed")
    kv_group_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="structured: fraction of KV groups removed")
    ranking: Literal["activation", "weight"] = Field("activation", description="structured: how neurons are scored")
    calibration: str | CalibrationSet | None = Field(
        None, description="structured with ranking activation: calibration set file or inline definition"
    )

    @model_validator(mode="after")
    def _settings_match_method(self) -> PruneConfig:
        if self.method == "magnitude":
            if self.sparsity == 0.0:
                raise ValueError("magnitude pruning needs 'sparsity' > 0")
            if self.mlp_fraction or self.kv_group_fraction:
                raise ValueError("'mlp_fraction' and 'kv_group_fraction' apply to method 'structured'")
        else:
            if self.mlp_fraction == 0.0 and self.kv_group_fraction == 0.0:
                raise ValueError("structured pruning needs 'mlp_fraction' or 'kv_group_fraction' > 0")
            if self.sparsity:
                raise ValueError("'sparsity' applies to method 'magnitude'")
            if self.ranking == "activation" and self.calibration is None:
                raise ValueError(
                    "ranking 'activation' needs 'calibration' (a calibration set); or use ranking 'weight'"
                )
        return self


def block_linears(loaded: LoadedModel) -> list:
    """Linear layers inside the transformer blocks (embeddings and the LM head are left alone)."""
    linears = []
    for block in loaded.arch.mlp_blocks(loaded.model):
        linears.extend(lin for lin, _ in block.inputs)
        linears.append(block.output)
    if loaded.arch.attention_blocks is not None:
        for att in loaded.arch.attention_blocks(loaded.model):
            linears.extend([att.q, att.k, att.v, att.o])
    else:  # encoders: every Linear of the encoder that is not an MLP projection is attention
        encoder = getattr(loaded.model, "encoder", None)
        if encoder is not None:
            import torch

            ids = {id(x) for x in linears}
            linears.extend(m for m in encoder.modules() if isinstance(m, torch.nn.Linear) and id(m) not in ids)
    return linears


def magnitude_prune(loaded: LoadedModel, sparsity: float, scope: str) -> None:
    import torch

    linears = block_linears(loaded)
    with torch.no_grad():
        if scope == "global":
            magnitudes = torch.cat([lin.weight.abs().flatten() for lin in linears])
            k = int(sparsity * magnitudes.numel())
            threshold = torch.kthvalue(magnitudes, k).values if k > 0 else None
            for lin in linears:
                if threshold is not None:
                    lin.weight.masked_fill_(lin.weight.abs() <= threshold, 0.0)
        else:
            for lin in linears:
                flat = lin.weight.abs().flatten()
                k = int(sparsity * flat.numel())
                if k > 0:
                    threshold = torch.kthvalue(flat, k).values
                    lin.weight.masked_fill_(lin.weight.abs() <= threshold, 0.0)


def _shrink_linear(lin, rows=None, cols=None):
    import torch

    weight = lin.weight.data
    bias = lin.bias.data if lin.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    new.weight.data = weight.contiguous()
    if bias is not None:
        new.bias.data = bias.contiguous()
    return new


def _replace_module(root, old, new) -> None:
    for module in root.modules():
        for name, child in module.named_children():
            if child is old:
                setattr(module, name, new)
                return
    raise StageError("prune", "could not locate a projection to replace")


def input_norms(loaded: LoadedModel, batches: list[dict], linears: list) -> dict[int, object]:
    """L2 norm of each input feature of `linears` over all calibration tokens (keyed by id(linear))."""
    import torch

    sums = {id(lin): torch.zeros(lin.in_features, dtype=torch.float64) for lin in linears}

    def accumulate(module, args):
        x = args[0].detach()
        sums[id(module)].add_(x.double().pow(2).reshape(-1, x.shape[-1]).sum(dim=0))

    hooks = [lin.register_forward_pre_hook(accumulate) for lin in linears]
    try:
        with torch.inference_mode():
            for feeds in batches:
                loaded.model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    finally:
        for hook in hooks:
            hook.remove()
    return {key: value.sqrt() for key, value in sums.items()}


def prune_mlp(loaded: LoadedModel, fraction: float, norms: dict | None = None) -> int:
    """Remove the same number of lowest-scoring neurons from every MLP block; returns neurons kept."""
    import torch

    model = loaded.model
    blocks = loaded.arch.mlp_blocks(model)
    size = blocks[0].output.in_features
    keep_n = max(1, size - int(round(fraction * size)))
    for block in blocks:
        out_norm = block.output.weight.detach().double().norm(dim=0)
        if norms is not None:
            score = norms[id(block.output)] * out_norm
        else:
            score = out_norm**2
            for lin, chunks in block.inputs:
                rows = lin.weight.detach().double().view(chunks, size, -1)
                score = score + (rows**2).sum(dim=(0, 2))
        keep = torch.sort(torch.topk(score, keep_n).indices).values
        for lin, chunks in block.inputs:
            rows = torch.cat([keep + c * size for c in range(chunks)])
            _replace_module(model, lin, _shrink_linear(lin, rows=rows))
        _replace_module(model, block.output, _shrink_linear(block.output, cols=keep))
    setattr(model.config, loaded.arch.intermediate_key, keep_n)
    return keep_n


def prune_kv_groups(loaded: LoadedModel, fraction: float, norms: dict | None = None) -> tuple[int, int]:
    """Remove the same number of lowest-scoring KV groups from every attention block; returns (heads, kv heads)."""
    import torch

    model = loaded.model
    if loaded.arch.attention_blocks is None:
        raise StageError("prune", f"attention-head pruning is not supported for '{loaded.arch.model_type}'")
    blocks = loaded.arch.attention_blocks(model)
    first = blocks[0]
    groups, per_group, hd = first.num_kv_heads, first.num_heads // first.num_kv_heads, first.head_dim
    keep_n = max(1, groups - int(round(fraction * groups)))
    if keep_n == groups:
        return first.num_heads, groups
    for att in blocks:
        if norms is not None:  # what each group's heads contribute through o_proj on real text
            contribution = norms[id(att.o)] * att.o.weight.detach().double().norm(dim=0)
            score = contribution.view(groups, per_group * hd).sum(1)
        else:
            score = torch.zeros(groups, dtype=torch.float64)
            score += (att.k.weight.detach().double().view(groups, -1) ** 2).sum(1)
            score += (att.v.weight.detach().double().view(groups, -1) ** 2).sum(1)
            score += (att.q.weight.detach().double().view(groups, -1) ** 2).sum(1)
            score += (att.o.weight.detach().double().view(-1, groups, per_group * hd) ** 2).sum(dim=(0, 2))
        keep = torch.sort(torch.topk(score, keep_n).indices).values
        kv_rows = torch.cat([torch.arange(g * hd, (g + 1) * hd) for g in keep.tolist()])
        q_rows = torch.cat([torch.arange(g * per_group * hd, (g + 1) * per_group * hd) for g in keep.tolist()])
        _replace_module(model, att.q, _shrink_linear(att.q, rows=q_rows))
        _replace_module(model, att.k, _shrink_linear(att.k, rows=kv_rows))
        _replace_module(model, att.v, _shrink_linear(att.v, rows=kv_rows))
        _replace_module(model, att.o, _shrink_linear(att.o, cols=q_rows))
    cfg = model.config
    cfg.head_dim = hd  # hidden_size / heads no longer gives the head size
    cfg.num_attention_heads = keep_n * per_group
    cfg.num_key_value_heads = keep_n
    for layer in model.model.layers:  # attention modules cache head counts at construction
        attn = layer.self_attn
        for attr, value in (
            ("num_heads", keep_n * per_group),
            ("num_key_value_heads", keep_n),
            ("num_key_value_groups", per_group),
        ):
            if hasattr(attn, attr):
                setattr(attn, attr, value)
    return keep_n * per_group, keep_n


def sparsity_of(loaded: LoadedModel) -> float:
    linears = block_linears(loaded)
    zeros = sum(int((lin.weight == 0).sum()) for lin in linears)
    return zeros / max(1, sum(lin.weight.numel() for lin in linears))


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def run(config: PruneConfig, ctx: StageContext, model: ModelHandle) -> StageResult:
    source = model.loaded
    params_before = count_parameters(source.model)
    pruned = LoadedModel(copy.deepcopy(source.model), source.tokenizer, source.arch, source.folder)
    bar = ctx.progress(total=1, desc=f"prune ({config.method})")
    details: dict = {"method": config.method, "parameters_before": params_before}
    if config.method == "magnitude":
        magnitude_prune(pruned, config.sparsity, config.scope)
        details.update(target_sparsity=config.sparsity, scope=config.scope)
    else:
        norms = None
        if config.ranking == "activation":
            batches, cal_info = stage_calibration(
                config.calibration, ctx.base_dir, ctx.location, "prune", source.tokenizer, source.arch.input_names
            )
            targets = [b.output for b in pruned.arch.mlp_blocks(pruned.model)]
            if pruned.arch.attention_blocks is not None:
                targets += [a.o for a in pruned.arch.attention_blocks(pruned.model)]
            norms = input_norms(pruned, batches, targets)
            details["calibration"] = cal_info
        details["ranking"] = config.ranking
        if config.mlp_fraction:
            details["intermediate_size"] = prune_mlp(pruned, config.mlp_fraction, norms)
        if config.kv_group_fraction:
            heads, kv = prune_kv_groups(pruned, config.kv_group_fraction, norms)
            details.update(num_attention_heads=heads, num_key_value_heads=kv)
    bar.update(1)
    bar.close()
    # Saving and reloading proves the pruned config describes the pruned weights.
    out_dir = ctx.work_dir / "model"
    pruned.model.save_pretrained(out_dir, safe_serialization=True)
    pruned.tokenizer.save_pretrained(out_dir)
    from glmopt.models import load_model

    reloaded = load_model(out_dir, task=source.arch.task)
    details.update(
        achieved_sparsity=round(sparsity_of(reloaded), 4),
        parameters_after=count_parameters(reloaded.model),
    )
    return StageResult(ModelHandle(kind="torch", produced_by="prune", torch=reloaded), details)
