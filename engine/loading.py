"""Load a model with its transcoder set on one device, checking that their shapes agree.

Without a transcoder folder the model's default set is used: trained and labelled on first use
(`default_transcoders.ensure_default_transcoders`) and cached after that.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from circuitbase.engine.default_transcoders import ensure_default_transcoders
from circuitbase.engine.models import LoadedModel, load_model, resolve_device
from circuitbase.engine.transcoders import TranscoderSet


def load_model_and_transcoders(
    model: str,
    transcoders: Path | None,
    *,
    device: str,
    progress: bool = False,
    log: Callable[[str], None] = lambda _line: None,
) -> tuple[LoadedModel, TranscoderSet, Path]:
    """The model, its transcoder set and the set's folder.

    device: 'auto', 'cpu' or 'cuda'. progress: show a progress bar if the default set must be trained
    (default False). log: receives one-line status messages (default: dropped).
    """
    target = resolve_device(device)
    loaded = load_model(model, device=target)
    if transcoders is None:
        transcoders = ensure_default_transcoders(loaded, progress=progress, log=log)
    transcoder_set = TranscoderSet.load(transcoders, device=target)
    transcoder_set.validate_for(
        n_layers=loaded.adapter.n_layers, d_model=loaded.adapter.d_model, model_name=loaded.name
    )
    return loaded, transcoder_set, transcoders
