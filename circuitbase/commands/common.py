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
from rich.markup import escape

from circuitbase.dbserver.errors import DbServerError

if TYPE_CHECKING:
    from circuitbase.engine.attribution import AttributionConfig
    from circuitbase.engine.models import LoadedModel
    from circuitbase.engine.transcoders import TranscoderSet


@contextmanager
def fail_on(console: Console) -> Iterator[None]:
    """Turn the project's expected errors (ValueError and OSError subclasses, and the database server's:
    no server configured, none reachable, a port in use) into one line and exit 1."""
    try:
        yield
    except (ValueError, OSError, DbServerError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")  # the message is text, not markup
        raise typer.Exit(1) from None


def load_model_and_transcoders(
    model: str, transcoders: str | None, *, device: str, precision: str = "float32"
) -> tuple[LoadedModel, TranscoderSet, Path]:
    """`engine.loading.load_model_and_transcoders`, with a progress bar and status lines on stderr."""
    from circuitbase.engine.loading import load_model_and_transcoders as load

    log = Console(stderr=True).print
    return load(model, transcoders, device=device, precision=precision, progress=True, log=log)


# Help texts of --model and --transcoders (every command that loads a model or a set).
MODEL_HELP = (
    "'smollm2', a local Hugging Face model directory, a .gguf file, or a Hugging Face repo id "
    "(google/gemma-2-2b, meta-llama/Llama-3.2-1B, Qwen/Qwen3-0.6B; @revision optional), downloaded into "
    "the Hugging Face cache (HF_HUB_OFFLINE=1: cache only)."
)
TRANSCODERS_HELP = (
    "Transcoder set: a circuit-tracer preset (gemma, llama), a Hugging Face repo id (org/name, or "
    "org/name/folder; @revision optional) or hf:// URI whose folder holds config.yaml, or a local folder "
    "or config.yaml."
)

# Attribution options shared by `attribute` and `ingest`.
Device = Annotated[str, typer.Option(help="'auto' (cuda when present), 'cpu' or 'cuda'.")]
BatchSize = Annotated[int, typer.Option(help="Targets per backward pass.")]
MaxFeatureNodes = Annotated[int, typer.Option(help="Feature targets visited per prompt (0 = all).")]
NodeThreshold = Annotated[float, typer.Option(help="Pruning: share of influence the kept nodes cover.")]
EdgeThreshold = Annotated[float, typer.Option(help="Pruning: share of edge influence the kept edges cover.")]
Precision = Annotated[
    str,
    typer.Option(
        help="float32 (exact), bfloat16 (model and transcoder weights in bfloat16: half the memory, "
        "faster on GPUs; features near their thresholds may switch, so edges are approximate) or tf32 "
        "(float32 weights, TensorFloat-32 CUDA matmuls)."
    ),
]
MaxRowMemory = Annotated[
    int,
    typer.Option(
        help="MiB for the stored rows of one graph; past it, nodes are chosen among the most influential "
        "features (edges stay exact) and, if even that does not fit, fewer are visited (said per graph)."
    ),
]

Faithfulness = Annotated[
    bool,
    typer.Option(
        "--faithfulness/--no-faithfulness",
        help="Check each graph on the real model: ablate its 10 most influential features one at a time "
        "and in groups and compare the target logit's change with the graph's prediction (about 14 "
        "forward passes per graph; stored in the graph's params and on :Graph).",
    ),
]

KeepFull = Annotated[
    bool,
    typer.Option(
        "--keep-full",
        help="Also keep each graph's unpruned remainder (float16 values, within 2^-11 relative; about 3 "
        "bytes an edge). By default a file holds the pruned graph exactly and only counts the rest.",
    ),
]


def attribution_config(
    *,
    batch_size: int,
    max_feature_nodes: int,
    node_threshold: float,
    edge_threshold: float,
    max_row_memory_mb: int,
    check_faithfulness: bool = False,
) -> AttributionConfig:
    from circuitbase.engine.attribution import AttributionConfig

    return AttributionConfig(
        batch_size=batch_size,
        max_feature_nodes=max_feature_nodes or None,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
        max_row_memory_mb=max_row_memory_mb,
        check_faithfulness=check_faithfulness,
    )
