"""`circuitbase transcoders ...`: inspect transcoder sets and make random ones for trials."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from circuitbase.commands.common import MODEL_HELP, TRANSCODERS_HELP, fail_on

app = typer.Typer(
    help="Inspect transcoder sets, or write random ones in the public format.", no_args_is_help=True
)
console = Console(stderr=True)


@app.command("random")
def random_command(
    out: Path = typer.Option(..., help="Directory to write the set to (config.yaml + safetensors)."),
    model: str = typer.Option("smollm2", help="Model whose shapes the set must fit."),
    d_transcoder: int = typer.Option(1024, help="Features per layer."),
    cross_layer: bool = typer.Option(False, help="Cross-layer transcoder instead of per-layer."),
    activation: str = typer.Option("jumprelu", help="relu, jumprelu or topk."),
    k: int = typer.Option(32, help="Active features per token for topk."),
    skip: bool = typer.Option(True, help="Per-layer sets: add a linear skip connection."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Write a randomly initialised transcoder set that fits MODEL (for trials before training)."""
    from circuitbase.engine.models import load_model
    from circuitbase.engine.transcoders import TranscoderSet

    with fail_on(console):
        adapter = load_model(model).adapter
        transcoders = TranscoderSet.random(
            n_layers=adapter.n_layers,
            d_model=adapter.d_model,
            d_transcoder=d_transcoder,
            cross_layer=cross_layer,
            activation=activation,
            skip=skip and not cross_layer,
            k=k,
            seed=seed,
            name=out.name,
        )
        console.print(f"wrote {transcoders.save(out)}")


@app.command("default")
def default_command(
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    device: str = typer.Option("auto", help="auto (cuda when present), cpu or cuda."),
) -> None:
    """Train (first time only), label and cache MODEL's default transcoder set; print its folder and quality.

    `attribute`, `ingest` and `demo --model smollm2` do this themselves when no set is given."""
    import json

    from circuitbase.engine.default_transcoders import ensure_default_transcoders
    from circuitbase.engine.models import load_model, resolve_device

    with fail_on(console):
        loaded = load_model(model, device=resolve_device(device))
        folder = ensure_default_transcoders(loaded, progress=True, log=console.print)
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        fvu = [m["fvu"] for m in metrics["layers"]]
        replacement = metrics["replacement"]
        console.print(
            f"{folder}\n{metrics['tokens']:,} training tokens at {metrics['tokens_per_second']:.0f} tokens/s "
            f"on {metrics['device']}; FVU mean {sum(fvu) / len(fvu):.3f} "
            f"(layers {min(fvu):.3f}-{max(fvu):.3f}), "
            f"next-token loss +{replacement['loss_increase']:.3f} nats, KL {replacement['kl']:.3f}"
        )


@app.command("info")
def info_command(path: str = typer.Argument(..., help=TRANSCODERS_HELP)) -> None:
    """Print a transcoder set's configuration."""
    from circuitbase.engine.transcoders import TranscoderSet

    with fail_on(console):
        config = TranscoderSet.load(path).config
        for key, value in vars(config).items():
            console.print(f"{key}: {value}")
