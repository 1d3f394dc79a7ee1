"""Tiny random causal LMs, one per supported family, for fast tests.

Every model has d_model 64, 2 layers, 4 query heads (2 key/value heads where the family has GQA), a
512-token vocabulary (the size of the fixture tokenizer) and weights large enough that attention and
normalisation are visibly nonlinear. Gemma models get a 4-token sliding window and softcaps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen3Config,
)

FAMILIES = ("llama", "gemma2", "gemma3_text", "qwen2", "qwen3", "gpt2")
FIXTURE_MODEL_DIR = Path(__file__).parent / "fixtures" / "circuit-tracer-format" / "tiny-llama"
VOCAB = 512
SLIDING_WINDOW = 4

_COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 128,
    "initializer_range": 0.3,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 3,
}
_GEMMA = {
    "query_pre_attn_scalar": 16,
    "sliding_window": SLIDING_WINDOW,
    "layer_types": ["sliding_attention", "full_attention"],
    "final_logit_softcapping": 3.0,
}


def tiny_config(family: str) -> PretrainedConfig:
    """The config of the tiny model for ``family`` (one of FAMILIES)."""
    if family == "llama":
        return LlamaConfig(**_COMMON, tie_word_embeddings=False)
    if family == "qwen2":
        return Qwen2Config(**_COMMON)
    if family == "qwen3":
        return Qwen3Config(**_COMMON)
    if family == "gemma2":
        return Gemma2Config(**_COMMON, **_GEMMA, attn_logit_softcapping=5.0)
    if family == "gemma3_text":
        return Gemma3TextConfig(**_COMMON, **_GEMMA)
    if family == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, initializer_range=0.3,
            bos_token_id=1, eos_token_id=2, pad_token_id=3,
        )  # fmt: skip
    raise ValueError(f"no tiny model for family {family!r}; choose one of {FAMILIES}")


def tiny_model(family: str, *, seed: int = 0) -> PreTrainedModel:
    """A float32, eval-mode, eager-attention tiny model of ``family`` with seeded random weights.

    Norm weights get seeded noise too, so tests see non-trivial norm gains.
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), attn_implementation="eager")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                parameter.add_(0.2 * torch.randn_like(parameter))
    return model.eval()


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """The 512-token word-level tokenizer of the fixture model (fits every tiny model's vocabulary)."""
    return AutoTokenizer.from_pretrained(FIXTURE_MODEL_DIR, local_files_only=True)


def tiny_input_ids(*, length: int = 10, seed: int = 1) -> torch.Tensor:
    """Random token ids ``[1, length]`` (longer than the sliding window), starting with BOS."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (1, length), generator=generator)
    ids[0, 0] = 1
    return ids
