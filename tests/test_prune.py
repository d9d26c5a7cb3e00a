"""Pruning on the PyTorch model: sparsity reached, structures removed, config consistent, export works."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from glmopt.models import load_model
from glmopt.pipeline import progress_factory
from glmopt.stages.base import ModelHandle, StageContext
from glmopt.stages.export import dummy_inputs, torch_outputs
from glmopt.stages.prune import PruneConfig, block_linears, count_parameters
from glmopt.stages.prune import run as prune


def run_prune(folder: Path, **settings):
    loaded = load_model(folder)
    work = Path(tempfile.mkdtemp())
    ctx = StageContext(work, work, loaded, [], ["CPUExecutionProvider"], 0, progress_factory(False))
    return loaded, prune(PruneConfig(**settings), ctx, ModelHandle("torch", "reference", torch=loaded))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_pruning_reaches_target_and_is_permanent(tiny_models, scope):
    original, result = run_prune(tiny_models["glm"], method="magnitude", sparsity=0.5, scope=scope)
    assert result.details["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert result.details["parameters_after"] == result.details["parameters_before"]
    # The reloaded model (from safetensors, no masks or hooks) carries the zeros.
    linears = block_linears(result.model.loaded)
    assert sum(int((lin.weight == 0).sum()) for lin in linears) / sum(lin.weight.numel() for lin in linears) >= 0.49
    assert not any(name.endswith("_orig") for name, _ in result.model.loaded.model.named_parameters())
    # The source model is not edited in place.
    assert min(float((lin.weight == 0).float().mean()) for lin in block_linears(original)) < 0.01


@pytest.mark.parametrize("kind", ["glm", "glm4", "llama", "bert"])
def test_structured_mlp_pruning_shrinks_and_reloads(tiny_models, kind):
    original, result = run_prune(tiny_models[kind], method="structured", mlp_fraction=0.25, ranking="weight")
    pruned = result.model.loaded
    size = original.model.config.intermediate_size
    assert pruned.model.config.intermediate_size == size - size // 4
    assert result.details["parameters_after"] < count_parameters(original.model)
    feeds = dummy_inputs(pruned, 2, 9)
    out = torch_outputs(pruned, feeds)
    assert out.shape == torch_outputs(original, feeds).shape and np.isfinite(out).all()


@pytest.mark.parametrize("kind", ["glm", "llama"])
def test_kv_group_pruning_removes_whole_groups(tiny_models, kind):
    original, result = run_prune(tiny_models[kind], method="structured", kv_group_fraction=0.5, ranking="weight")
    cfg = result.model.loaded.model.config
    assert cfg.num_key_value_heads == 1 and cfg.num_attention_heads == 2
    assert result.details["parameters_after"] < count_parameters(original.model)
    out = torch_outputs(result.model.loaded, dummy_inputs(result.model.loaded, 1, 7))
    assert np.isfinite(out).all()


def test_structured_pruning_removes_the_weakest_neurons(tiny_models):
    """Norm ranking: removing neurons that carry almost nothing leaves the outputs almost unchanged."""
    import torch

    loaded = load_model(tiny_models["llama"])
    with torch.no_grad():  # make neurons 0-7 of every block clearly the weakest
        for block in loaded.arch.mlp_blocks(loaded.model):
            block.output.weight[:, :8] *= 0.01
            for lin, _ in block.inputs:
                lin.weight[:8] *= 0.01
    from glmopt.stages.prune import prune_mlp

    feeds = dummy_inputs(loaded, 1, 11)
    before = torch_outputs(loaded, feeds)
    prune_mlp(loaded, 8 / loaded.model.config.intermediate_size)
    after = torch_outputs(loaded, feeds)
    assert np.abs(after - before).max() < 0.01 * np.abs(before).max()
    assert loaded.model.config.intermediate_size == 88


def test_prune_config_rejects_mismatched_settings():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="magnitude pruning needs 'sparsity' > 0"):
        PruneConfig(method="magnitude")
    with pytest.raises(ValidationError, match="'sparsity' applies to method 'magnitude'"):
        PruneConfig(method="structured", mlp_fraction=0.1, sparsity=0.2, ranking="weight")
    with pytest.raises(ValidationError, match="ranking 'activation' needs 'calibration'"):
        PruneConfig(method="structured", mlp_fraction=0.1)


@pytest.mark.parametrize("kind", ["glm", "llama"])
def test_activation_ranking_drops_neurons_that_never_fire(tiny_models, text_files, kind):
    """A neuron whose output weights are large but whose activation is always zero carries nothing:
    weight ranking keeps it, activation ranking removes it."""
    import torch

    loaded = load_model(tiny_models[kind])
    size = loaded.model.config.intermediate_size
    dead = list(range(8))
    with torch.no_grad():
        for block in loaded.arch.mlp_blocks(loaded.model):
            block.output.weight[:, dead] *= 50.0  # loud weights...
            lin, chunks = block.inputs[-1]  # ...behind an up projection that outputs zero
            for c in range(chunks):
                lin.weight[[c * size + d for d in dead if chunks == 1 or c == 1]] = 0.0
    from glmopt.calibrate.dataset import CalibrationSet, calibration_batches
    from glmopt.data import DataSource
    from glmopt.stages.prune import input_norms, prune_mlp

    cal = CalibrationSet(data=DataSource(files=[str(text_files["calib"])]), num_samples=4, sequence_length=32)
    batches, _ = calibration_batches(cal, loaded.tokenizer, loaded.arch.input_names, text_files["calib"].parent, "t")
    blocks = loaded.arch.mlp_blocks(loaded.model)
    norms = input_norms(loaded, batches, [b.output for b in blocks])
    assert all(float(norms[id(b.output)][dead].max()) == 0.0 for b in blocks)
    feeds = dummy_inputs(loaded, 1, 9)
    before = torch_outputs(loaded, feeds)
    prune_mlp(loaded, len(dead) / size, norms)
    assert np.abs(torch_outputs(loaded, feeds) - before).max() < 1e-4  # exactly the silent neurons went
