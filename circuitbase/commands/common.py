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
    """`engine.loading.load_model_and_transcoders`, with a progress bar and status lines on stderr."""
    from circuitbase.engine.loading import load_model_and_transcoders as load

    return load(model, transcoders, device=device, progress=True, log=Console(stderr=True).print)


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
