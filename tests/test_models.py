"""Model sources: the Llama -> GLM weight mapping behind the demo model, and refusing unsafe folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from glmopt.errors import InputError
from glmopt.models import load_model
from glmopt.models.builtin import glm_config_from_llama, llama_to_glm_state_dict


def glm_twin(llama, permute: bool = True):
    """The GLM built from a Llama's config and weights; without `permute`, q/k rows keep Llama's order."""
    from transformers import GlmForCausalLM

    lc = llama.config
    head_dim = lc.hidden_size // lc.num_attention_heads
    glm = GlmForCausalLM(glm_config_from_llama(lc)).eval()
    state = llama_to_glm_state_dict(llama.state_dict(), lc.num_attention_heads, lc.num_key_value_heads, head_dim)
    if not permute:
        for name in list(state):
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                state[name] = llama.state_dict()[name]
    missing, unexpected = glm.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return glm


def test_llama_weights_as_glm_compute_the_same_logits(tiny_models):
    llama = load_model(tiny_models["llama"]).model
    glm = glm_twin(llama)
    ids = torch.randint(3, llama.config.vocab_size, (2, 23))
    with torch.no_grad():
        expected = llama(input_ids=ids).logits
        got = glm(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_glm_without_q_k_permutation_would_differ(tiny_models):
    """Guards the test above: the permutation is what makes the two agree."""
    llama = load_model(tiny_models["llama"]).model
    glm = glm_twin(llama, permute=False)
    ids = torch.randint(3, llama.config.vocab_size, (1, 17))
    with torch.no_grad():
        assert (glm(input_ids=ids).logits - llama(input_ids=ids).logits).abs().max() > 1e-2


def test_pickle_weights_are_refused(tiny_models, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_models["glm"], folder)
    (folder / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(
        InputError, match=r"weights are pickle files \(pytorch_model.bin\); glmopt loads only safetensors"
    ):
        load_model(folder)


def test_folder_without_weights(tiny_models, tmp_path):
    folder = tmp_path / "empty"
    shutil.copytree(tiny_models["glm"], folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"no model weights \(\*.safetensors\) found"):
        load_model(folder)


def test_unsupported_model_type(tiny_models, tmp_path):
    folder = tmp_path / "gpt"
    shutil.copytree(tiny_models["glm"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt2"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="model_type 'gpt2' is not supported; expected one of"):
        load_model(folder)


def test_remote_code_is_not_trusted_by_default(tiny_models, tmp_path):
    folder = tmp_path / "remote"
    shutil.copytree(tiny_models["glm"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    loaded = load_model(folder)  # auto_map is ignored without trust_remote_code: the stock GLM class loads
    assert type(loaded.model).__name__ == "GlmForCausalLM"
