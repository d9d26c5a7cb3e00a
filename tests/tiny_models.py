"""Tiny models built from configs, with a tokenizer trained on the spot: fast, offline, real code paths."""

from __future__ import annotations

from pathlib import Path

WORDS = [
    "the",
    "model",
    "reads",
    "text",
    "and",
    "writes",
    "numbers",
    "while",
    "a",
    "quantizer",
    "maps",
    "every",
    "float",
    "to",
    "eight",
    "bits",
    "and",
    "calibration",
    "picks",
    "ranges",
    "from",
    "real",
    "activations",
    "so",
    "that",
    "accuracy",
    "stays",
    "close",
    "to",
    "the",
    "reference",
    "news",
    "articles",
    "describe",
    "markets",
    "weather",
    "sport",
    "politics",
    "science",
    "and",
    "music",
    "across",
    "many",
    "years",
]


def training_text(n: int = 400) -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(n)]


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bert":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(
            vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        )
        tok.train_from_iterator(training_text(), trainer)
        from tokenizers.processors import TemplateProcessing

        tok.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(training_text(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def make_tiny_model(kind: str, folder: Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny random-weight model of `kind` (glm, glm4, llama, bert) with a tokenizer into `folder`."""
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        Glm4Config,
        Glm4ForCausalLM,
        GlmConfig,
        GlmForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    common = dict(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
    )
    if kind == "glm":
        # Real GLM-4 checkpoints rotate half of each head and carry q/k/v bias.
        config = GlmConfig(
            **common,
            num_key_value_heads=2,
            head_dim=16,
            partial_rotary_factor=0.5,
            attention_bias=True,
            pad_token_id=2,
            eos_token_id=2,
            bos_token_id=1,
            **overrides,
        )
        model = GlmForCausalLM(config)
    elif kind == "glm4":
        config = Glm4Config(
            **common,
            num_key_value_heads=2,
            head_dim=16,
            partial_rotary_factor=0.5,
            attention_bias=True,
            pad_token_id=2,
            eos_token_id=2,
            bos_token_id=1,
            **overrides,
        )
        model = Glm4ForCausalLM(config)
    elif kind == "llama":
        config = LlamaConfig(
            **common, num_key_value_heads=2, pad_token_id=2, eos_token_id=2, bos_token_id=1, **overrides
        )
        model = LlamaForCausalLM(config)
    elif kind == "bert":
        config = BertConfig(**{**common, "intermediate_size": 128}, type_vocab_size=2, pad_token_id=0, **overrides)
        model = BertModel(config, add_pooling_layer=False)
    else:
        raise ValueError(kind)
    # Random init has tiny weights; scale them so activations have a spread worth calibrating.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    model.eval().save_pretrained(folder, safe_serialization=True)
    _tokenizer(kind).save_pretrained(folder)
    return folder
