"""Tiny random causal LMs, one per supported family, for fast tests.

Every model has d_model 64, 2 layers, 4 query heads (2 key/value heads where the family has GQA), a
512-token vocabulary (the size of the fixture tokenizer) and weights large enough that attention and
normalisation are visibly nonlinear. Gemma models get a 4-token sliding window and softcaps.

`parity_model` and `parity_transcoder_weights` draw every tensor from its own seeded generator, so the
same weights come out under any transformers version (the circuit-tracer parity fixtures are made in a
side environment with an older one; tests/fixtures/parity/README.md).
"""

from __future__ import annotations

import zlib
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


def _seeded_normal(seed: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.randn(shape, generator=generator)


def parity_model(family: str, *, seed: int) -> PreTrainedModel:
    """A float32, eval-mode, eager-attention tiny model of ``family`` whose weights depend only on the seed.

    Each parameter is drawn from a generator seeded by ``seed`` and its name: matrices and embeddings
    ~ N(0, 0.15^2), biases ~ N(0, 0.05^2), norm weights w ~ N(0, 0.3^2) for Gemma's ``(1 + w)`` norms and
    1 + N(0, 0.3^2) for the others (LayerNorm biases ~ N(0, 0.05^2)).
    """
    model = AutoModelForCausalLM.from_config(tiny_config(family), attn_implementation="eager")
    one_plus = family.startswith("gemma")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = _seeded_normal(seed, name, tuple(parameter.shape))
            if name.endswith("bias"):
                value = 0.05 * noise
            elif "norm" in name or ".ln_" in name:
                value = 0.3 * noise if one_plus else 1.0 + 0.3 * noise
            else:
                value = 0.15 * noise
            parameter.copy_(value)
    return model.eval()


def parity_transcoder_weights(
    *, seed: int, n_layers: int, d_model: int, d_transcoder: int
) -> dict[str, list[torch.Tensor]]:
    """Seeded per-layer transcoder tensors except the calibrated ``b_enc`` and ``threshold``.

    ``W_enc`` rows are unit directions times a scale in [0.5, 2); ``W_dec`` ~ N(0, 0.3^2 / d_model),
    ``b_dec`` ~ N(0, 0.05^2), ``W_skip`` ~ N(0, 0.2^2 / d_model).
    """
    tensors: dict[str, list[torch.Tensor]] = {"W_enc": [], "W_dec": [], "b_dec": [], "W_skip": []}
    for layer in range(n_layers):
        directions = _seeded_normal(seed, f"{layer}.W_enc", (d_transcoder, d_model))
        scales = 0.5 + 1.5 * _seeded_normal(seed, f"{layer}.scale", (d_transcoder, 1)).sigmoid()
        tensors["W_enc"].append(directions / directions.norm(dim=1, keepdim=True) * scales)
        tensors["W_dec"].append(
            0.3 / d_model**0.5 * _seeded_normal(seed, f"{layer}.W_dec", (d_transcoder, d_model))
        )
        tensors["b_dec"].append(0.05 * _seeded_normal(seed, f"{layer}.b_dec", (d_model,)))
        tensors["W_skip"].append(
            0.2 / d_model**0.5 * _seeded_normal(seed, f"{layer}.W_skip", (d_model, d_model))
        )
    return tensors
