"""`circuitbase contrast`: features active in one prompt and silent in the other, with what fed them where
they fired and how far below threshold they stayed where they did not (`engine.contrast.contrast`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from circuitbase.commands.common import (
    MODEL_HELP,
    TRANSCODERS_HELP,
    Device,
    Precision,
    fail_on,
    load_model_and_transcoders,
)

if TYPE_CHECKING:
    from circuitbase.engine.contrast import Contrast, ContrastFeature, SourceNode

console = Console(stderr=True)
out = Console(soft_wrap=True)


def contrast_command(
    prompt_a: str = typer.Argument(..., help="Prompt A (tokenised as `attribute` does)."),
    prompt_b: str = typer.Argument(..., help="Prompt B."),
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    transcoders: str | None = typer.Option(
        None, help=f"{TRANSCODERS_HELP} Default: MODEL's own set, trained on first use and cached."
    ),
    top: int = typer.Option(10, min=1, help="Features shown per direction (largest activation first)."),
    edges: int = typer.Option(5, min=0, help="Incoming edges shown per feature (largest |weight| first)."),
    as_json: bool = typer.Option(False, "--json", help="Print every feature as JSON instead of tables."),
    device: Device = "auto",
    dtype: Precision = "float32",
) -> None:
    """Features active in PROMPT_A and at no position of PROMPT_B (and the reverse): their activation and
    strongest incoming edges where they fire, and their pre-activation and gap to threshold where not."""
    with fail_on(console):
        for name, text in (("A", prompt_a), ("B", prompt_b)):
            if not text.strip():
                raise ValueError(f"prompt {name} is empty")
        loaded, transcoder_set, _folder = load_model_and_transcoders(
            model, transcoders, device=device, precision=dtype
        )
        result, tokens = run_contrast(loaded, transcoder_set, prompt_a, prompt_b, top_edges=edges)
    if as_json:
        out.print_json(
            json.dumps({"only_in_a": _rows(result.only_in_a), "only_in_b": _rows(result.only_in_b)})
        )
        return
    directions = (("A", "B", result.only_in_a, tokens), ("B", "A", result.only_in_b, tokens[::-1]))
    for active, silent, features, (active_tokens, silent_tokens) in directions:
        _print(active, silent, features[:top], len(features), active_tokens, silent_tokens)


def run_contrast(
    loaded: Any, transcoders: Any, prompt_a: str, prompt_b: str, *, top_edges: int
) -> tuple[Contrast, tuple[list[str], list[str]]]:
    """Tokenise both prompts (`prompts.prompt_token_ids`) and contrast them; also their token texts."""
    import torch

    from circuitbase.engine.contrast import contrast
    from circuitbase.engine.prompts import prompt_token_ids

    tokenizer, adapter = loaded.tokenizer, loaded.adapter
    device = adapter.unembedding().device
    ids = [prompt_token_ids(tokenizer, text) for text in (prompt_a, prompt_b)]
    tensors = [torch.tensor(i, dtype=torch.long, device=device) for i in ids]
    result = contrast(loaded.model, adapter, transcoders, *tensors, top_edges=top_edges)
    texts = [[tokenizer.decode([t]) for t in i] for i in ids]
    return result, (texts[0], texts[1])


def _rows(features: list[ContrastFeature]) -> list[dict[str, Any]]:
    return [{**asdict(f), "gap": f.gap} for f in features]


def _at(position: int, tokens: list[str]) -> str:
    return f"@{position} {tokens[position]!r}"


def _source(node: SourceNode, tokens: list[str]) -> str:
    if node.kind == "feature":
        return f"L{node.layer} #{node.feature} {_at(node.position, tokens)}"
    if node.kind == "error":
        return f"error L{node.layer} {_at(node.position, tokens)}"
    return f"token {_at(node.position, tokens)}"


def _print(
    active: str,
    silent: str,
    features: list[ContrastFeature],
    total: int,
    active_tokens: list[str],
    silent_tokens: list[str],
) -> None:
    table = Table(title=f"active in {active}, silent in {silent} ({len(features)} of {total})")
    table.add_column("feature", no_wrap=True)
    table.add_column(f"activation in {active}", no_wrap=True)
    table.add_column(f"closest in {silent}: pre-activation (gap to threshold)", no_wrap=True)
    table.add_column(f"top incoming edges in {active}")
    for f in features:
        edges = "; ".join(f"{e.weight:+.3g} {_source(e.source, active_tokens)}" for e in f.edges)
        table.add_row(
            f"L{f.layer} #{f.feature}",
            f"{f.activation:.3f} {_at(f.position, active_tokens)}",
            f"{f.pre_activation:.3f} {_at(f.silent_position, silent_tokens)} ({f.gap:.3f})",
            edges if f.in_graph else "(not a node of the graph)",
        )
    out.print(table)
