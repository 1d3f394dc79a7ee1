"""Transcoder training throughput and quality, circuitbase against EleutherAI's sparsify in the same run.

1. Each circuitbase case (`--kinds`, default PLT TopK with skip, PLT JumpReLU with skip, CLT TopK)
   trains on `--tokens` tokens; the baseline, sparsify's TopK skip transcoders (`bench/sparsify_baseline`),
   trains on the same texts with the same width, k and batch size.
2. One evaluator scores every set on the same held-out texts (`engine.training.evaluate_transcoders`):
   FVU and L0 per layer, the share of features unused on those tokens, and the replacement model's
   next-token loss increase and KL with every MLP replaced.
3. The table gives tokens/s and quality per case, and ratios against sparsify for the like-for-like case
   (PLT TopK with skip); a second table gives FVU per layer; `--json` writes every figure.

    python bench/train.py                                   # the shipped toy model, toy task text
    python bench/train.py --model smollm2 --tokens 20000 --d-transcoder 2048 --kinds plt:topk
    python bench/train.py --model smollm2 --device cuda --tokens 2000000 --d-transcoder 8192

Without --corpus: the toy task text for the toy model, the default corpus (Python documentation) for
any other. The baseline needs `pip install eai-sparsify` (`.[bench]`); `--baseline none` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from circuitbase.engine import toy
from circuitbase.engine.corpus import python_docs_corpus
from circuitbase.engine.default_transcoders import corpus_path
from circuitbase.engine.models import load_model, resolve_device
from circuitbase.engine.training import TrainConfig, evaluate_transcoders, train_transcoders

LIKE_FOR_LIKE = "plt:topk"


def summary(name: str, device: str, speed: dict[str, Any], quality: dict[str, Any]) -> dict[str, Any]:
    """One row: throughput of a training run and the held-out quality of its set."""
    layers = quality["layers"]
    return {
        "trainer": name,
        "device": device,
        "tokens": speed["tokens"],
        "seconds": speed["train_seconds"],
        "tokens_per_second": speed["tokens_per_second"],
        "fvu_mean": sum(m["fvu"] for m in layers) / len(layers),
        "fvu": [m["fvu"] for m in layers],
        "l0_mean": sum(m["l0"] for m in layers) / len(layers),
        "unused_mean": sum(m["unused_fraction"] for m in layers) / len(layers),
        "loss_increase": quality["replacement"]["loss_increase"],
        "kl": quality["replacement"]["kl"],
    }


def results_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("trainer", "device", "tokens", "s", "tokens/s", "FVU", "L0", "unused", "loss +", "KL"):
        table.add_column(column, justify="left" if column in ("trainer", "device") else "right")
    for r in rows:
        table.add_row(
            r["trainer"], r["device"], f"{r['tokens']:,}", f"{r['seconds']:.1f}",
            f"{r['tokens_per_second']:,.0f}",
            f"{r['fvu_mean']:.4f}", f"{r['l0_mean']:.1f}", f"{r['unused_mean']:.3f}",
            f"{r['loss_increase']:.3f}", f"{r['kl']:.3f}",
        )  # fmt: skip
    return table


def ratios(ours: dict[str, Any], baseline: dict[str, Any]) -> str:
    """circuitbase / sparsify for the like-for-like case (> 1 is better for tokens/s; < 1 for the rest;
    n/a where a figure is not positive)."""
    parts = [
        f"{label} {ours[key] / baseline[key]:.2f}x" if ours[key] > 0 and baseline[key] > 0 else f"{label} n/a"
        for label, key in (
            ("tokens/s", "tokens_per_second"), ("FVU", "fvu_mean"),
            ("loss increase", "loss_increase"), ("KL", "kl"),
        )
    ]  # fmt: skip
    return f"circuitbase {LIKE_FOR_LIKE} / sparsify: " + ", ".join(parts)


def per_layer_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="held-out FVU per layer")
    table.add_column("layer", justify="right")
    for r in rows:
        table.add_column(r["trainer"], justify="right")
    for layer in range(len(rows[0]["fvu"])):
        table.add_row(str(layer), *(f"{r['fvu'][layer]:.4f}" for r in rows))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model spec (default: the shipped toy model)")
    parser.add_argument("--corpus", type=Path, default=None, help="corpus path (default: see above)")
    parser.add_argument("--tokens", type=int, default=200_000, help="training tokens per case")
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--d-transcoder", type=int, default=1024)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2, help="circuitbase's Adam learning rate")
    parser.add_argument("--kinds", nargs="+", default=[LIKE_FOR_LIKE, "plt:jumprelu", "clt:topk"])
    parser.add_argument("--baseline", choices=["sparsify", "none"], default="sparsify")
    parser.add_argument("--eval-tokens", type=int, default=5_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="write every row here too")
    args = parser.parse_args()
    console = Console(width=160)  # the table's ten columns, also when the output goes to a file
    loaded = load_model(args.model or str(toy.shipped_paths()[0]), device=resolve_device(args.device))
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.corpus:
            corpus = args.corpus
        elif args.model is None:
            corpus = Path(tmp) / "corpus.txt"
            corpus.write_text("\n".join(toy.corpus_lines()) + "\n", encoding="utf-8")
        else:
            corpus = python_docs_corpus(corpus_path())
        base = TrainConfig(
            d_transcoder=args.d_transcoder,
            k=args.k,
            total_tokens=args.tokens,
            batch_tokens=args.batch_tokens,
            lr=args.lr,
            buffer_tokens=max(20 * args.batch_tokens, 20_000),
            eval_tokens=args.eval_tokens,
            checkpoint_every=0,
            device=args.device,
        )
        for case in args.kinds:
            kind, activation = case.split(":")
            config = replace(base, kind=kind, activation=activation)
            metrics = train_transcoders(
                loaded.model, loaded.tokenizer, corpus=corpus, out_dir=Path(tmp) / case.replace(":", "-"),
                config=config, progress=True,
            )  # fmt: skip
            rows.append(summary(f"circuitbase {case}", metrics["device"], metrics, metrics))
            console.print(results_table(rows[-1:], case))
        if args.baseline == "sparsify":
            from sparsify_baseline import train_with_sparsify  # bench/, next to this file

            transcoders, speed = train_with_sparsify(
                loaded.model, loaded.tokenizer, corpus=corpus, config=base, out_dir=Path(tmp) / "sparsify"
            )
            quality = evaluate_transcoders(
                loaded.model, loaded.tokenizer, transcoders, corpus=corpus, config=base
            )
            rows.append(summary("sparsify topk (skip)", str(transcoders.device), speed, quality))
    console.print(
        results_table(
            rows,
            f"{loaded.name}: {args.tokens:,} tokens, {args.d_transcoder} features, k {args.k}, "
            f"batch {args.batch_tokens} tokens; quality on {args.eval_tokens:,} held-out tokens",
        )
    )
    console.print(per_layer_table(rows))
    ours = next((r for r in rows if r["trainer"] == f"circuitbase {LIKE_FOR_LIKE}"), None)
    if ours and rows[-1]["trainer"].startswith("sparsify"):
        console.print(ratios(ours, rows[-1]))
    console.print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
