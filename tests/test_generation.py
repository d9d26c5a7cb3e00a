"""A decoder artifact serves text generation through a plain onnxruntime.InferenceSession.

The loop below is what a serving team writes against Optimum's I/O names, with no glmopt code: the
prompt goes in with an empty cache, then one token per call with the previous call's `present.N.*`
fed back as `past_key_values.N.*`.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_build import build

from recipes import decoder_recipe, write

STEPS = 12


def empty_past(session: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    """A cache of length 0 for every `past_key_values.*` input: what the prompt's call takes."""
    return {
        i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32)
        for i in session.get_inputs()
        if i.name.startswith("past_key_values.")
    }


def greedy_with_cache(session: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray, steps: int) -> np.ndarray:
    feeds = {"input_ids": ids, "attention_mask": mask, **empty_past(session, len(ids))}
    past_names = [n for n in feeds if n.startswith("past_key_values.")]
    out_names = [o.name for o in session.get_outputs()]
    tokens = []
    for _ in range(steps):
        feeds["position_ids"] = np.clip(np.cumsum(feeds["attention_mask"], axis=1) - 1, 0, None)[
            :, -feeds["input_ids"].shape[1] :
        ]
        outputs = dict(zip(out_names, session.run(None, feeds), strict=True))
        next_ids = outputs["logits"][:, -1].argmax(axis=-1).astype(np.int64)[:, None]
        tokens.append(next_ids)
        feeds = {
            "input_ids": next_ids,
            "attention_mask": np.concatenate([feeds["attention_mask"], np.ones_like(next_ids)], axis=1),
        }
        for name in past_names:
            feeds[name] = outputs["present." + name.removeprefix("past_key_values.")]
    return np.concatenate(tokens, axis=1)


def greedy_without_cache(session: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray, steps: int):
    """The same decoding, recomputing the whole sequence each step (the cache inputs left empty)."""
    tokens = []
    for _ in range(steps):
        feeds = {"input_ids": ids, "attention_mask": mask, **empty_past(session, len(ids))}
        feeds["position_ids"] = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        next_ids = session.run(["logits"], feeds)[0][:, -1].argmax(axis=-1).astype(np.int64)[:, None]
        tokens.append(next_ids)
        ids = np.concatenate([ids, next_ids], axis=1)
        mask = np.concatenate([mask, np.ones_like(next_ids)], axis=1)
    return np.concatenate(tokens, axis=1)


def left_padded_prompts(vocab: int, lengths=(9, 5), pad_id: int = 0):
    rng = np.random.default_rng(3)
    width = max(lengths)
    ids = np.full((len(lengths), width), pad_id, np.int64)
    mask = np.zeros((len(lengths), width), np.int64)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = rng.integers(10, vocab, n)
        mask[row, width - n :] = 1
    return ids, mask


def fp32_recipe(model, data):
    """Export and fuse only: the FP32 artifact (no evaluation; generation is the check here)."""
    recipe = decoder_recipe(model, data, name="fp32", fuse={"backend": "auto"})
    recipe["stages"] = [s for s in recipe["stages"] if s["stage"] in ("export", "fuse")]
    return recipe


@pytest.mark.parametrize("kind", ["glm", "glm4", "llama"])
def test_artifact_generates_the_same_greedy_tokens_as_pytorch(kind, tiny_models, text_files, tmp_path):
    from transformers import AutoModelForCausalLM

    code, out, result = build(write(tmp_path / "r.yaml", fp32_recipe(tiny_models[kind], text_files)), tmp_path)
    assert code == 0, result.output
    session = ort.InferenceSession(f"{out['artifact']}/model.onnx", providers=["CPUExecutionProvider"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models[kind]).eval()
    layers = model.config.num_hidden_layers
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{n}.{part}" for n in range(layers) for part in ("key", "value")
    ]
    assert [o.name for o in session.get_outputs()] == ["logits"] + [
        f"present.{n}.{part}" for n in range(layers) for part in ("key", "value")
    ]
    past = session.get_inputs()[3]
    assert past.shape[0] == "batch_size" and past.shape[2] == "past_sequence_length"

    ids, mask = left_padded_prompts(model.config.vocab_size)
    with torch.inference_mode():
        expected = model.generate(
            torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=STEPS,
            do_sample=False,
            pad_token_id=0,
        )[:, ids.shape[1] :].numpy()
    got = greedy_with_cache(session, ids, mask, STEPS)
    np.testing.assert_array_equal(got, expected)


def test_int8_artifact_generates_the_same_with_and_without_its_cache(glm_build_int8):
    session = ort.InferenceSession(f"{glm_build_int8}/model.onnx", providers=["CPUExecutionProvider"])
    ids, mask = left_padded_prompts(320)
    np.testing.assert_array_equal(
        greedy_with_cache(session, ids, mask, STEPS), greedy_without_cache(session, ids, mask, STEPS)
    )


@pytest.fixture(scope="module")
def glm_build_int8(tiny_models, text_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    code, out, result = build(write(root / "r.yaml", decoder_recipe(tiny_models["glm"], text_files)), root)
    assert code == 0, result.output
    return out["artifact"]
