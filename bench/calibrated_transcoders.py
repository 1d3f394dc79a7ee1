"""Random JumpReLU+skip transcoders that fire like trained ones, for benchmarks.

`TranscoderSet.random` leaves ~12% of features active (about 2,000 per token per layer at 16K
features), which makes attribution timings meaningless. Here every feature's threshold is calibrated on
the model's own inputs at the set's input hook: over a few hundred tokens of text (start positions
left out), the cut c_f is the per-feature quantile of the raw pre-activation x . W_enc[f] above which a share
`per_token / d_transcoder` of tokens lie, so about `per_token` features fire per token per layer. As in
the parity fixtures, threshold_f is positive, (0.2..1) x the feature's spread, and b_enc_f =
threshold_f - c_f, so `pre > threshold` exactly when x . W_enc[f] > c_f and active values are > 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import nn

from circuitbase.engine.adapters import ModelAdapter
from circuitbase.engine.prompts import start_token_id
from circuitbase.engine.replacement import hooked, hooks_of
from circuitbase.engine.transcoders import TranscoderSet


def calibration_ids(
    tokenizer, texts: Iterable[str], *, tokens: int = 512, length: int = 64, vocab_size: int | None = None
) -> list[torch.Tensor]:
    """Sequences of the start token then <= `length` - 1 token ids of each text, until `tokens` tokens
    after the start tokens; ids >= `vocab_size` are dropped (a vocabulary smaller than the tokenizer's)."""
    start = start_token_id(tokenizer)
    sequences, total = [], 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        ids = [i for i in ids if vocab_size is None or i < vocab_size][: length - 1]
        if len(ids) < 8:
            continue
        sequences.append(torch.tensor([start, *ids]))
        total += len(ids)
        if total >= tokens:
            break
    return sequences


@torch.no_grad()
def mlp_inputs(model: nn.Module, adapter: ModelAdapter, sequences: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, the inputs [tokens, d_model] at `adapter`'s input hook over `sequences`, BOS left out."""
    kept: list[list[torch.Tensor]] = [[] for _ in range(adapter.n_layers)]
    device = adapter.unembedding().device
    with hooked(adapter, on_mlp_input=lambda layer, x: kept[layer].append(x[0, 1:].float())):
        for ids in sequences:
            model(ids[None].to(device), logits_to_keep=1, use_cache=False)
    return [torch.cat(parts) for parts in kept]


def calibrate(
    transcoders: TranscoderSet, inputs: list[torch.Tensor], *, per_token: float, seed: int = 0
) -> TranscoderSet:
    """A copy of `transcoders` whose b_enc and thresholds make ~`per_token` features fire per input row
    (`inputs`: per layer [tokens, d_model] at the set's input hook)."""
    if transcoders.threshold is None:
        raise ValueError("calibration needs a JumpReLU set (per-feature thresholds)")
    generator = torch.Generator().manual_seed(seed)
    b_enc, thresholds = [], []
    for layer, x in enumerate(inputs):
        w_enc = transcoders.W_enc[layer].float()
        raw = x.to(w_enc.device) @ w_enc.T  # [tokens, d_tc]
        above = max(1, round(raw.shape[0] * per_token / transcoders.d_transcoder))
        cut = torch.topk(raw, k=min(above + 1, raw.shape[0]), dim=0).values[-1]  # `above` rows exceed it
        spread = raw.std(dim=0).clamp(min=1e-6)
        scale = 0.2 + 0.8 * torch.rand(cut.shape, generator=generator).to(cut.device)
        threshold = scale * spread
        b_enc.append(threshold - cut)
        thresholds.append(threshold)
    weights = dataclasses.replace(transcoders.weights(), b_enc=b_enc, threshold=thresholds)
    return TranscoderSet(transcoders.config, weights)


def calibrated_transcoders(
    model: nn.Module,
    adapter: ModelAdapter,
    sequences: list[torch.Tensor],
    *,
    d_transcoder: int,
    per_token: float,
    input_hook: str,
    output_hook: str,
    name: str,
    seed: int = 0,
) -> TranscoderSet:
    """Random per-layer JumpReLU+skip transcoders reading `input_hook` and writing `output_hook`, with
    thresholds calibrated on `model`'s activations over `sequences` (see the module docstring)."""
    base = TranscoderSet.random(
        n_layers=adapter.n_layers, d_model=adapter.d_model, d_transcoder=d_transcoder,
        skip=True, seed=seed, name=name,
    )  # fmt: skip
    config = dataclasses.replace(base.config, input_hook=input_hook, output_hook=output_hook)
    base = TranscoderSet(config, base.weights()).to(adapter.unembedding().device)
    inputs = mlp_inputs(model, adapter.with_hooks(hooks_of(base)), sequences)
    return calibrate(base, inputs, per_token=per_token, seed=seed)
