"""Transcoders that circuitbase trains itself for a model that has none: trained on first use, then cached.

1. A set lives in `<cache>/transcoders/<model>-<key>`; the key hashes the training settings, the labelling
   settings and the corpus name, so other settings train a new set instead of reusing one that no longer
   matches.
2. Missing: write the default corpus (`corpus.python_docs_corpus`), train into `<folder>.partial` with
   checkpoints (an interrupted first use resumes where it stopped), label every feature on the same
   corpus, then rename `<folder>.partial` to `<folder>`. A folder that exists is therefore complete.
3. Present: nothing is recomputed; the folder holds the public-format set, metrics.json and
   feature_labels.json.

`DEFAULT_TRAINING` is sized for a 2-core CPU (see README, "Transcoders for SmolLM2"): the point is a
usable set in minutes, not the best set; train a bigger one with `circuitbase train-transcoders`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from circuitbase.engine.corpus import python_docs_corpus
from circuitbase.engine.labels import LabelConfig, label_features
from circuitbase.engine.training import TrainConfig, checkpoint_dir, train_transcoders
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.paths import cache_home

CORPUS_NAME = "python-docs"
DEFAULT_TRAINING = TrainConfig(
    kind="plt",
    activation="topk",
    d_transcoder=2048,
    k=16,
    total_tokens=100_000,
    batch_tokens=512,
    lr=1e-2,
    warmup_steps=10,
    buffer_tokens=8192,
    eval_tokens=5000,
    checkpoint_every=50,
    dead_after_tokens=50_000,
)
DEFAULT_LABELS = LabelConfig(max_tokens=50_000)


def transcoders_home() -> Path:
    """Where trained default sets are cached: `<cache>/transcoders`."""
    return cache_home() / "transcoders"


def corpus_path() -> Path:
    """The default corpus file, written once: `<cache>/corpora/python-docs-<python version>.jsonl`."""
    return cache_home() / "corpora" / f"{CORPUS_NAME}-py{sys.version_info[0]}{sys.version_info[1]}.jsonl"


def default_set_dir(model_name: str, *, config: TrainConfig = DEFAULT_TRAINING) -> Path:
    """The folder of `model_name`'s default set for `config` (whether or not it exists yet)."""
    settings = {"train": asdict(config), "labels": asdict(DEFAULT_LABELS), "corpus": corpus_path().name}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return transcoders_home() / f"{model_name}-{config.kind}-{config.activation}-{config.d_transcoder}-{key}"


def ensure_default_transcoders(
    loaded: Any,
    *,
    config: TrainConfig = DEFAULT_TRAINING,
    progress: bool = False,
    log: Callable[[str], None] = lambda _line: None,
) -> Path:
    """The folder of `loaded`'s (a `models.LoadedModel`) default transcoder set, training and labelling it
    first when it is not cached (see the module docstring).

    config: training settings (default `DEFAULT_TRAINING`; its device is replaced by the model's).
    progress: show training and labelling progress on stderr. log: receives one-line status messages.
    """
    final = default_set_dir(loaded.name, config=config)
    if final.is_dir():
        return final
    partial = final.with_name(final.name + ".partial")
    device = str(next(loaded.model.parameters()).device)
    settings = replace(config, device=device, name=final.name)
    corpus = python_docs_corpus(corpus_path())
    log(
        f"no transcoders for {loaded.name} yet: training {settings.kind} {settings.activation} "
        f"x{settings.d_transcoder} on {settings.total_tokens:,} tokens of {corpus.name} into {final} (once)"
    )
    if not (partial / "metrics.json").is_file():  # else training finished and labelling was cut short
        train_transcoders(
            loaded.model,
            loaded.tokenizer,
            corpus=corpus,
            out_dir=partial,
            config=settings,
            resume=True,  # continues from a checkpoint an interrupted first use left, if any
            progress=progress,
            model_name=loaded.name,
            log=log,
        )
    transcoders = TranscoderSet.load(partial, device=device)
    labels = label_features(
        loaded.model, loaded.tokenizer, transcoders, corpus=corpus, config=DEFAULT_LABELS,
        model_name=loaded.name, progress=progress, log=log,
    )  # fmt: skip
    labels.save(partial)
    os.replace(partial, final)
    shutil.rmtree(checkpoint_dir(partial), ignore_errors=True)
    log(f"cached {final}")
    return final
