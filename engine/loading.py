"""Load a model with its transcoder set on one device, checking that their shapes agree.

The model comes first (a name, folder, .gguf or Hub repo id: `models.load_model`); the set is then
checked against its layer count and width before its weights are read or downloaded. Without a
transcoder spec the model's default set is used: trained and labelled on first use
(`default_transcoders.ensure_default_transcoders`) and cached after that.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from circuitbase.engine.default_transcoders import ensure_default_transcoders
from circuitbase.engine.models import LoadedModel, load_model, resolve_device
from circuitbase.engine.replacement import hooks_of
from circuitbase.engine.transcoder_sources import resolve_source
from circuitbase.engine.transcoders import ModelFit, TranscoderSet


def load_model_and_transcoders(
    model: str,
    transcoders: str | Path | None,
    *,
    device: str,
    precision: str = "float32",
    offload_decoders: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = lambda _line: None,
) -> tuple[LoadedModel, TranscoderSet, Path]:
    """The model, its transcoder set and the local folder of the set's config.yaml.

    transcoders: a folder, config file, preset name, hf:// URI or Hub repo id (`transcoder_io`), or None
    for the model's default set. device: 'auto', 'cpu' or 'cuda'. precision: one of `PRECISIONS` (default
    float32; bfloat16 holds the model and the set's weights in bfloat16, the set still computing in
    float32; tf32 lets CUDA matmuls use TensorFloat-32). offload_decoders: keep
    decoders in CPU memory (default False). progress: show a progress bar if the default set must be
    trained (default False). log: receives one-line status messages (default: dropped).
    """
    target = resolve_device(device)
    dtype = apply_precision(precision)
    loaded = load_model(model, device=target, dtype=dtype)
    if transcoders is None:
        transcoders = ensure_default_transcoders(loaded, progress=progress, log=log)
    source = resolve_source(transcoders)
    adapter = loaded.adapter
    transcoder_set = TranscoderSet.load(
        source,
        device=target,
        dtype=dtype,
        offload_decoders=offload_decoders,
        fit=ModelFit(n_layers=adapter.n_layers, d_model=adapter.d_model, model_name=loaded.name),
    )
    loaded.adapter = loaded.adapter.with_hooks(hooks_of(transcoder_set))
    return loaded, transcoder_set, source.folder


PRECISIONS = ("float32", "bfloat16", "tf32")


def apply_precision(precision: str) -> torch.dtype:
    """The weight dtype of a precision name; 'tf32' also turns on TensorFloat-32 matmuls for CUDA
    (process-wide, as torch's flags are), any other name turns them off."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    return torch.bfloat16 if precision == "bfloat16" else torch.float32
