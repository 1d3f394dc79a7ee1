"""Helpers shared by the command modules: error reporting and loading a model with its transcoders.

Command modules import the engine inside their functions, so `circuitbase --help` and the database
commands start without loading torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from circuitbase.engine.attribution import AttributionConfig
    from circuitbase.engine.models import LoadedModel
    from circuitbase.engine.transcoders import TranscoderSet


@contextmanager
def fail_on(console: Console) -> Iterator[None]:
    """Turn the project's expected errors (ValueError and OSError subclasses) into one line and exit 1."""
    try:
        yield
    except (ValueError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def load_model_and_transcoders(
    model: str, transcoders: Path | None, *, device: str
) -> tuple[LoadedModel, TranscoderSet, Path]:
    """Load the model and its transcoder set on one device, checking that their shapes agree; returns
    them with the set's folder. Without `transcoders`: the model's default set, trained and labelled on
    first use and cached after that."""
    from circuitbase.engine.models import load_model, resolve_device
    from circuitbase.engine.transcoders import TranscoderSet

    target = resolve_device(device)
    loaded = load_model(model, device=target)
    if transcoders is None:
        from circuitbase.engine.default_transcoders import ensure_default_transcoders

        transcoders = ensure_default_transcoders(loaded, progress=True, log=Console(stderr=True).print)
    transcoder_set = TranscoderSet.load(transcoders, device=target)
    transcoder_set.validate_for(
        n_layers=loaded.adapter.n_layers, d_model=loaded.adapter.d_model, model_name=loaded.name
    )
    return loaded, transcoder_set, transcoders


# Attribution options shared by `attribute` and `ingest`.
Device = Annotated[str, typer.Option(help="'auto' (cuda when present), 'cpu' or 'cuda'.")]
BatchSize = Annotated[int, typer.Option(help="Targets per backward pass.")]
MaxFeatureNodes = Annotated[int, typer.Option(help="Feature targets visited per prompt (0 = all).")]
NodeThreshold = Annotated[float, typer.Option(help="Pruning: share of influence the kept nodes cover.")]
EdgeThreshold = Annotated[float, typer.Option(help="Pruning: share of edge influence the kept edges cover.")]


def attribution_config(
    *, batch_size: int, max_feature_nodes: int, node_threshold: float, edge_threshold: float
) -> AttributionConfig:
    from circuitbase.engine.attribution import AttributionConfig

    return AttributionConfig(
        batch_size=batch_size,
        max_feature_nodes=max_feature_nodes or None,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
    )
