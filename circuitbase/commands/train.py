"""`circuitbase train-transcoders` and `circuitbase toy ...`: train transcoders; build the toy model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from circuitbase.commands.common import fail_on, resolve_device

console = Console(stderr=True)
toy_app = typer.Typer(
    help="The toy model with planted circuits (ground truth for the platform).", no_args_is_help=True
)


def train_transcoders_command(
    model: str = typer.Option("smollm2", help="Model: 'smollm2', a local HF directory or a .gguf file."),
    corpus: Path | None = typer.Option(
        None, help="Training text: a .jsonl/.txt file or a directory (default: text MODEL generates itself)."
    ),
    generate_texts: int = typer.Option(2000, help="Without --corpus: texts to generate (cached)."),
    out: Path = typer.Option(..., help="Directory for the transcoders, checkpoints and metrics.json."),
    kind: str = typer.Option("plt", help="plt (per-layer) or clt (cross-layer)."),
    activation: str = typer.Option("topk", help="topk, jumprelu or relu."),
    d_transcoder: int = typer.Option(8192, help="Features per layer."),
    k: int = typer.Option(32, help="Active features per token (topk)."),
    skip: bool = typer.Option(True, help="Linear skip connection (plt only)."),
    tokens: int = typer.Option(10_000_000, help="Training tokens."),
    batch_tokens: int = typer.Option(4096, help="Tokens per optimiser step."),
    lr: float = typer.Option(2e-4, help="Peak learning rate."),
    buffer_tokens: int = typer.Option(
        32_768, help="Tokens in the shuffle buffer (RAM: x n_layers x 2 x d_model x 4 B)."
    ),
    context_length: int = typer.Option(128, help="Tokens per text (longer texts are truncated)."),
    checkpoint_every: int = typer.Option(1000, help="Steps between checkpoints (0: only at the end)."),
    resume: bool = typer.Option(False, help="Continue from the latest checkpoint in OUT."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("auto", help="auto (cuda when present), cpu or cuda."),
) -> None:
    """Train transcoders for MODEL on CORPUS; writes the public format plus metrics.json into OUT."""
    from circuitbase.engine.corpus import generated_corpus
    from circuitbase.engine.models import load_model, models_dir
    from circuitbase.engine.training import TrainConfig, train_transcoders

    with fail_on(console):
        config = TrainConfig(
            kind=kind,
            activation=activation,
            d_transcoder=d_transcoder,
            k=k,
            skip=skip,
            total_tokens=tokens,
            batch_tokens=batch_tokens,
            lr=lr,
            buffer_tokens=buffer_tokens,
            context_length=context_length,
            checkpoint_every=checkpoint_every,
            seed=seed,
            device=device,
            name=out.name,
        )
        loaded = load_model(model, device=resolve_device(device))
        if corpus is None:
            corpus = (
                models_dir().parent
                / "corpora"
                / (f"{loaded.name}-generated-{generate_texts}x{context_length}-seed{seed}.jsonl")
            )
            console.print(f"generating {generate_texts} texts with {loaded.name} into {corpus} (once)")
            generated_corpus(
                loaded.model,
                loaded.tokenizer,
                corpus,
                n_texts=generate_texts,
                length=context_length,
                seed=seed,
            )
        metrics = train_transcoders(
            loaded.model,
            loaded.tokenizer,
            corpus=corpus,
            out_dir=out,
            config=config,
            resume=resume,
            progress=True,
            model_name=loaded.name,
            log=console.print,
        )
        _print_metrics(metrics)


def _print_metrics(metrics: dict) -> None:
    for layer, m in enumerate(metrics["layers"]):
        console.print(f"layer {layer}: fvu {m['fvu']:.4f}  l0 {m['l0']:.1f}  dead {m['dead_fraction']:.3f}")
    r = metrics["replacement"]
    console.print(
        f"next-token loss {r['loss']:.4f} -> {r['replacement_loss']:.4f} (+{r['loss_increase']:.4f}), "
        f"KL {r['kl']:.4f}; {metrics['tokens_per_second']:.0f} tokens/s"
    )


@toy_app.command("build")
def toy_build_command(
    out: Path = typer.Option(
        ..., help="Directory to write model/, transcoders/, ground_truth.json, metrics.json."
    ),
    seed: int = typer.Option(0, help="Seed of the model and transcoder training."),
    steps: int = typer.Option(2000, help="Training steps of the toy model."),
) -> None:
    """Re-train the toy model and its transcoders reproducibly from SEED."""
    from circuitbase.engine.toy import ToyConfig, build_toy

    with fail_on(console):
        metrics = build_toy(out, config=ToyConfig(seed=seed, steps=steps), log=console.print)
        _print_metrics(metrics["transcoders"])
        console.print(f"wrote {out}")


@toy_app.command("prompts")
def toy_prompts_command(
    out: Path = typer.Option(..., help="JSONL file to write."),
    n: int = typer.Option(200, help="Number of prompts."),
    seed: int = typer.Option(0, help="Sampling seed."),
) -> None:
    """Write toy prompts (prompt, answer, tags, dataset) as JSONL for `circuitbase attribute`."""
    import json

    from circuitbase.engine.toy import toy_prompts

    with fail_on(console):
        out.write_text("".join(json.dumps(p) + "\n" for p in toy_prompts(n, seed=seed)), encoding="utf-8")
        console.print(f"wrote {n} prompts to {out}")
