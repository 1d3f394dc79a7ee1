"""Transcoder training throughput: tokens/s, seconds, and the resulting FVU / L0 / loss increase.

The default case trains TopK per-layer transcoders for the shipped toy model on the toy task text;
`--model smollm2` (or any local model) with `--corpus PATH` measures a real model. One JSON line per case.

    python bench/train.py
    python bench/train.py --model smollm2 --corpus docs/ --tokens 200000 --d-transcoder 4096 --device cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from circuitbase.engine import toy
from circuitbase.engine.models import load_model
from circuitbase.engine.training import TrainConfig, train_transcoders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec (default: the shipped toy model)")
    parser.add_argument("--corpus", default=None, help="corpus path (default: the toy task text)")
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--d-transcoder", type=int, default=1024)
    parser.add_argument("--kinds", nargs="+", default=["plt:topk", "plt:jumprelu", "clt:topk"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    loaded = load_model(args.model or str(toy.shipped_paths()[0]))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(args.corpus) if args.corpus else Path(tmp) / "corpus.txt"
        if not args.corpus:
            corpus.write_text("\n".join(toy.corpus_lines()) + "\n", encoding="utf-8")
        for case in args.kinds:
            kind, activation = case.split(":")
            config = TrainConfig(
                kind=kind,
                activation=activation,
                d_transcoder=args.d_transcoder,
                k=16,
                total_tokens=args.tokens,
                batch_tokens=args.batch_tokens,
                lr=1e-3,
                buffer_tokens=max(20 * args.batch_tokens, 20_000),
                eval_tokens=5_000,
                checkpoint_every=0,
                device=args.device,
            )
            metrics = train_transcoders(
                loaded.model, loaded.tokenizer, corpus=corpus, out_dir=Path(tmp) / case.replace(":", "-"),
                config=config,
            )  # fmt: skip
            print(
                json.dumps(
                    {
                        "model": loaded.name,
                        "case": case,
                        "device": metrics["device"],
                        "tokens": metrics["tokens"],
                        "seconds": round(metrics["train_seconds"], 2),
                        "tokens_per_second": round(metrics["tokens_per_second"]),
                        "fvu": [round(m["fvu"], 4) for m in metrics["layers"]],
                        "l0": [round(m["l0"], 2) for m in metrics["layers"]],
                        "dead_fraction": [round(m["dead_fraction"], 4) for m in metrics["layers"]],
                        "loss_increase": round(metrics["replacement"]["loss_increase"], 4),
                        "kl": round(metrics["replacement"]["kl"], 4),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
