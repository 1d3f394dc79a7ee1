"""EleutherAI's sparsify as the baseline transcoder trainer for `bench/train.py`.

1. Take the texts circuitbase trains on (`ActivationStream.token_ids`, held-out texts left out), one
   right-padded text per row.
2. Train sparsify's skip transcoders (TopK, same width, k and tokens per batch; its default optimiser and
   learning rate) on every layer's MLP, BOS and padding excluded, and time it, from tokenising to the end of
   `Trainer.fit`.
3. Read its saved weights into a `TranscoderSet`, so one evaluator scores both trainers, and check
   that the set's outputs equal sparsify's own forward pass on random inputs.

Needs `pip install eai-sparsify` (the `bench` extra). On CPU its Triton decoder is switched off.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from circuitbase.engine.adapters import adapter_for
from circuitbase.engine.training import ActivationStream, TrainConfig
from circuitbase.engine.transcoder_io import TranscoderConfig, TranscoderWeights
from circuitbase.engine.transcoders import TranscoderSet


def padded_rows(stream: ActivationStream, *, n_tokens: int, pad_id: int) -> torch.Tensor:
    """[texts, longest] token ids: the training texts in stream order, one per row (each cut at
    `context_length`, as circuitbase cuts them) and right-padded with `pad_id`, until they hold at least
    `n_tokens` tokens besides a leading BOS. Causal attention keeps right padding from changing any
    real token's activations, so sparsify sees what circuitbase captures."""
    texts: list[list[int]] = []
    counted = 0
    for chunk in stream.token_ids(held_out=False, repeat=True):
        for text in chunk:
            texts.append(text)
            counted += len(text) - (text[0] == stream.bos_id)
            if counted >= n_tokens:
                width = max(len(t) for t in texts)
                return torch.tensor([t + [pad_id] * (width - len(t)) for t in texts])
    raise AssertionError("unreachable: the training stream repeats")


def _hookpoints(model: nn.Module) -> list[str]:
    adapter = adapter_for(model)
    names = {id(module): name for name, module in model.base_model.named_modules()}
    points = []
    for layer in range(adapter.n_layers):
        module = adapter.mlp_in_module(layer)
        if module is not adapter.mlp_out_module(layer):
            raise ValueError(f"{type(model).__name__}: sparsify needs the MLP input and output on one module")
        points.append(names[id(module)])
    return points


def train_with_sparsify(
    model: nn.Module, tokenizer: Any, *, corpus: Path, config: TrainConfig, out_dir: Path
) -> tuple[TranscoderSet, dict[str, float]]:
    """Sparsify's transcoders for `model` trained on `config.total_tokens` tokens of `corpus`, and
    {"tokens", "train_seconds", "tokens_per_second"} of its run (tokenising included)."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        os.environ["SPARSIFY_DISABLE_TRITON"] = "1"  # read when sparsify is imported
    from datasets import Dataset
    from safetensors.torch import load_file
    from sparsify import SparseCoderConfig, Trainer
    from sparsify import TrainConfig as SparsifyConfig

    started = time.perf_counter()  # tokenising is timed on both sides: circuitbase tokenises as it trains
    stream = ActivationStream(model, tokenizer, corpus, config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = padded_rows(stream, n_tokens=config.total_tokens, pad_id=pad_id)
    excluded = torch.tensor(sorted({pad_id} | ({stream.bos_id} if stream.bos_id is not None else set())))
    tokens = int((~torch.isin(rows, excluded)).sum())
    hookpoints = _hookpoints(model)
    settings = SparsifyConfig(
        SparseCoderConfig(num_latents=config.d_transcoder, k=config.k, skip_connection=True, transcode=True),
        batch_size=max(1, round(config.batch_tokens * len(rows) / tokens)),  # rows holding ~batch_tokens
        hookpoints=hookpoints,
        exclude_tokens=excluded.tolist(),
        init_seeds=[config.seed],
        loss_fn="fvu",
        log_to_wandb=False,
        save_every=10**9,  # only the final save
        save_dir=str(out_dir),
        run_name="sparsify",
    )
    dataset = Dataset.from_dict({"input_ids": rows.tolist()}).with_format("torch")
    with contextlib.redirect_stdout(io.StringIO()):  # its setup chatter would break the bench's table
        Trainer(settings, dataset, model).fit()
        seconds = time.perf_counter() - started
    folders = [out_dir / "sparsify" / point for point in hookpoints]  # where sparsify saved each coder
    files = [load_file(folder / "sae.safetensors") for folder in folders]
    adapter = adapter_for(model)
    transcoders = TranscoderSet(
        TranscoderConfig(
            kind="per_layer",
            activation="topk",
            k=config.k,
            n_layers=adapter.n_layers,
            d_model=adapter.d_model,
            d_transcoder=config.d_transcoder,
            skip=True,
            name="sparsify",
        ),
        TranscoderWeights(
            W_enc=[f["encoder.weight"] for f in files],
            b_enc=[f["encoder.bias"] for f in files],
            W_dec=[f["W_dec"] for f in files],
            b_dec=[f["b_dec"] for f in files],
            W_skip=[f["W_skip"] for f in files],
        ),
    ).to(device)
    _check_conversion(transcoders, folders)
    return transcoders, {"tokens": tokens, "train_seconds": seconds, "tokens_per_second": tokens / seconds}


@torch.no_grad()
def _check_conversion(transcoders: TranscoderSet, folders: list[Path]) -> None:
    """Raise unless `transcoders` reconstructs random inputs as sparsify's saved coders do (to 1e-3 of
    the output's scale; sparsify runs in bfloat16 on GPUs that support it)."""
    from sparsify import SparseCoder

    x = torch.randn(64, transcoders.d_model, generator=torch.Generator().manual_seed(0)).to(
        transcoders.device
    )
    ours = transcoders.reconstruct([x] * transcoders.n_layers)
    for layer, folder in enumerate(folders):
        theirs = SparseCoder.load_from_disk(folder, device=transcoders.device)(x).sae_out.float()
        error = float((ours[layer] - theirs).norm() / theirs.norm().clamp_min(1e-12))
        if error > 1e-3 * (1 if transcoders.device.type == "cpu" else 10):
            raise AssertionError(
                f"layer {layer}: converted sparsify coder differs from its own by {error:.2e}"
            )
