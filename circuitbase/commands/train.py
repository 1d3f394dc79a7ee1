"""`circuitbase train-transcoders`, `label-features` and `toy ...`: train and label transcoders; the toy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from circuitbase.commands.common import MODEL_HELP, fail_on

console = Console(stderr=True)
toy_app = typer.Typer(
    help="The toy model with planted circuits (ground truth for the platform).", no_args_is_help=True
)


def train_transcoders_command(
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    corpus: Path | None = typer.Option(
        None,
        help="Training text: a .jsonl/.txt file or a directory (default: the Python standard library's "
        "docstrings, see README).",
    ),
    generate_texts: int = typer.Option(
        0, help="Without --corpus: train on this many texts MODEL generates instead (cached; slow on CPU)."
    ),
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
    label: bool = typer.Option(True, help="Then label the features (feature_labels.json) on the corpus."),
    label_tokens: int = typer.Option(500_000, help="Corpus tokens the feature labels are computed on."),
) -> None:
    """Train transcoders for MODEL on CORPUS; writes the public format plus metrics.json into OUT."""
    from circuitbase.engine.models import load_model, resolve_device
    from circuitbase.engine.training import TrainConfig, train_transcoders
    from circuitbase.engine.transcoders import TranscoderSet

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
        corpus = corpus or _default_corpus(loaded, generate_texts, context_length, seed)
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
        if label:
            _label(loaded, TranscoderSet.load(out, device=loaded.model.device), out, corpus, label_tokens)


def _default_corpus(loaded: Any, n_texts: int, length: int, seed: int) -> Path:
    """Without n_texts: the standard library's docstrings; else n_texts texts MODEL generates (cached)."""
    from circuitbase.engine.corpus import generated_corpus, python_docs_corpus
    from circuitbase.engine.default_transcoders import corpus_path

    if n_texts <= 0:
        return python_docs_corpus(corpus_path())
    path = corpus_path().parent / f"{loaded.name}-generated-{n_texts}x{length}-seed{seed}.jsonl"
    console.print(f"generating {n_texts} texts with {loaded.name} into {path} (once)")
    return generated_corpus(loaded.model, loaded.tokenizer, path, n_texts=n_texts, length=length, seed=seed)


def _label(loaded: Any, transcoders: Any, out: Path, corpus: Path, max_tokens: int) -> None:
    from circuitbase.engine.labels import LabelConfig, label_features

    labels = label_features(
        loaded.model,
        loaded.tokenizer,
        transcoders,
        corpus=corpus,
        config=LabelConfig(max_tokens=max_tokens),
        model_name=loaded.name,
        progress=True,
        log=console.print,
    )
    path = labels.save(out)
    for f in labels.features[:3]:
        console.print(f"feature {f.layer}/{f.index}: {f.label}")
    console.print(f"wrote {len(labels.features)} feature labels to {path}")


def label_features_command(
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    transcoders: Path = typer.Option(..., help="Transcoder folder; feature_labels.json is written into it."),
    corpus: Path | None = typer.Option(
        None, help="Text to label on: a .jsonl/.txt file or a directory (default: stdlib docstrings)."
    ),
    max_tokens: int = typer.Option(500_000, help="Corpus tokens to scan."),
    generate_texts: int = typer.Option(
        0, help="Without --corpus: label on this many texts MODEL generates itself instead (cached)."
    ),
    context_length: int = typer.Option(128, help="Tokens per text (longer texts are truncated)."),
    device: str = typer.Option("auto", help="auto (cuda when present), cpu or cuda."),
) -> None:
    """Label every feature of TRANSCODERS: top contexts, promoted/suppressed tokens, density, label."""
    from circuitbase.engine.models import load_model, resolve_device
    from circuitbase.engine.transcoders import TranscoderSet

    with fail_on(console):
        loaded = load_model(model, device=resolve_device(device))
        transcoder_set = TranscoderSet.load(transcoders, device=loaded.model.device)
        _label(
            loaded,
            transcoder_set,
            transcoders,
            corpus or _default_corpus(loaded, generate_texts, context_length, 0),
            max_tokens,
        )


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
