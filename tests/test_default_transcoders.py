"""A model's default transcoder set: trained and labelled on first use, complete or absent, then reused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from circuitbase.engine import default_transcoders as defaults
from circuitbase.engine import toy
from circuitbase.engine.labels import labels_path
from circuitbase.engine.models import load_model
from circuitbase.engine.training import TrainingError
from circuitbase.engine.transcoders import TranscoderSet

SMALL = replace(
    defaults.DEFAULT_TRAINING,
    d_transcoder=64,
    k=4,
    total_tokens=4 * 256,
    batch_tokens=256,
    buffer_tokens=1024,
    eval_tokens=300,
    checkpoint_every=2,
    context_length=32,
)


def test_first_use_trains_labels_and_caches_then_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRCUITBASE_HOME", str(tmp_path))
    loaded = load_model(str(toy.shipped_paths()[0]))
    lines: list[str] = []
    folder = defaults.ensure_default_transcoders(loaded, config=SMALL, log=lines.append)
    assert folder == defaults.default_set_dir("toy", config=SMALL)
    assert folder.parent == tmp_path / "transcoders"
    assert any("training plt topk x64" in line for line in lines)
    transcoders = TranscoderSet.load(folder)
    transcoders.validate_for(n_layers=loaded.adapter.n_layers, d_model=loaded.adapter.d_model)
    assert transcoders.config.d_transcoder == 64 and transcoders.config.k == 4
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["tokens"] == 4 * 256 and len(metrics["layers"]) == loaded.adapter.n_layers
    labels = json.loads(labels_path(folder).read_text())
    assert labels  # every feature labelled beside the set
    assert not folder.with_name(folder.name + ".partial").exists()
    assert not any(p.name.endswith(".checkpoints") for p in folder.parent.iterdir())

    before = (folder / "metrics.json").stat().st_mtime_ns
    lines.clear()
    assert defaults.ensure_default_transcoders(loaded, config=SMALL, log=lines.append) == folder
    assert lines == [] and (folder / "metrics.json").stat().st_mtime_ns == before
    other = replace(SMALL, k=8)
    assert defaults.default_set_dir("toy", config=other) != folder  # other settings: another set


def test_interrupted_first_use_is_finished_not_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRCUITBASE_HOME", str(tmp_path))
    loaded = load_model(str(toy.shipped_paths()[0]))
    folder = defaults.default_set_dir("toy", config=SMALL)
    partial = folder.with_name(folder.name + ".partial")

    def stop_before_labels(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(defaults, "label_features", stop_before_labels)
    with pytest.raises(KeyboardInterrupt):
        defaults.ensure_default_transcoders(loaded, config=SMALL)
    assert (partial / "metrics.json").is_file() and not folder.exists()
    trained = (partial / "metrics.json").stat().st_mtime_ns
    monkeypatch.undo()
    monkeypatch.setenv("CIRCUITBASE_HOME", str(tmp_path))
    lines: list[str] = []
    assert defaults.ensure_default_transcoders(loaded, config=SMALL, log=lines.append) == folder
    assert (folder / "metrics.json").stat().st_mtime_ns == trained  # not trained again
    assert labels_path(folder).is_file()
    with pytest.raises(TrainingError, match="k must be in"):
        defaults.ensure_default_transcoders(loaded, config=replace(SMALL, k=0))
