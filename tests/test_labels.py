"""Feature labels of the toy model: logit lens, top contexts, density, the shipped file, and Neo4j."""

from __future__ import annotations

import functools
from pathlib import Path

import neo4j
import pytest
import torch

from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.labels import (
    FeatureLabels,
    LabelConfig,
    LabelError,
    label_features,
    labels_path,
    load_labels,
)
from circuitbase.engine.models import LoadedModel, load_model
from circuitbase.engine.prompts import Prompt
from circuitbase.engine.runner import iter_attribute
from circuitbase.engine.toy import corpus_lines, shipped_paths
from circuitbase.engine.training import capture
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.ingest.loader import IngestConfig, ingest_files
from circuitbase.ingest.model import feature_key
from circuitbase.ingest.schema import apply_schema
from tests.numerics import assert_close

LINES = corpus_lines()[:300]  # two-hop, one-hop, capital and arithmetic facts of the toy


@functools.cache
def _toy_on(device: str) -> tuple[LoadedModel, TranscoderSet]:
    model_dir, tc_dir = shipped_paths()
    return load_model(str(model_dir), device=device), TranscoderSet.load(tc_dir, device=device)


@functools.cache
def _labels_on(device: str, corpus: Path) -> FeatureLabels:
    loaded, transcoders = _toy_on(device)
    return label_features(
        loaded.model, loaded.tokenizer, transcoders, corpus=corpus, config=LabelConfig(logit_tokens=5)
    )


@pytest.fixture
def toy(device: torch.device) -> tuple[LoadedModel, TranscoderSet]:
    """The shipped toy model and transcoders on `device` (loaded once per device)."""
    return _toy_on(str(device))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "toy.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def labelled(device: torch.device, corpus: Path) -> FeatureLabels:
    """Labels of the toy's features computed on `device` (once per device)."""
    return _labels_on(str(device), corpus)


def _mlp_inputs(loaded: LoadedModel, texts: list[str]) -> torch.Tensor:
    ids = [loaded.tokenizer(t).input_ids for t in texts]
    return capture(loaded.model, loaded.adapter, ids, bos_id=loaded.tokenizer.bos_token_id)[:, :, 0]


def test_logit_lens_is_unembedding_times_decoder(toy, labelled: FeatureLabels) -> None:
    loaded, transcoders = toy
    for layer, index in ((0, 7), (1, 3)):
        by_hand = loaded.model.lm_head.weight @ transcoders.W_dec[layer][index]
        values, ids = by_hand.topk(5)
        low_values, low_ids = by_hand.topk(5, largest=False)
        label = labelled.feature(layer, index)
        assert [t for t, _ in label.promoted] == [loaded.tokenizer.decode([i]) for i in ids.tolist()]
        promoted = torch.tensor([v for _, v in label.promoted], device=values.device)
        suppressed = torch.tensor([v for _, v in label.suppressed], device=values.device)
        assert_close(promoted, values, rel=1e-5)
        assert_close(suppressed, low_values, rel=1e-5)
        assert label.suppressed[0][0] == loaded.tokenizer.decode([int(low_ids[0])])


def test_top_contexts_are_sorted_and_reencode_to_their_activation(toy, labelled: FeatureLabels) -> None:
    loaded, transcoders = toy
    checked = 0
    for feature in labelled.features[::37]:
        acts = [c.act for c in feature.contexts]
        assert acts == sorted(acts, reverse=True)
        for context in feature.contexts[:2]:
            text = LINES[context.doc]
            assert "".join(context.tokens).strip() in text
            assert context.tokens[context.at].strip() == text.split()[context.pos - 1]  # BOS is position 0
            x = _mlp_inputs(loaded, [text])[context.pos - 1, feature.layer]
            again = transcoders.encode(feature.layer, x)[feature.index]
            assert float(again) == pytest.approx(context.act, rel=1e-4)
            checked += 1
    assert checked >= 10


def test_density_is_the_share_of_tokens_a_feature_fires_on(toy, labelled: FeatureLabels) -> None:
    loaded, transcoders = toy
    x = _mlp_inputs(loaded, LINES)
    assert labelled.tokens == x.shape[0] == sum(len(line.split()) for line in LINES)
    for layer in range(transcoders.n_layers):
        density = (transcoders.encode(layer, x[:, layer]) > 0).double().mean(0)
        stored = torch.tensor(
            [labelled.feature(layer, i).density for i in range(transcoders.d_transcoder)],
            dtype=torch.float64,
            device=density.device,
        )
        assert_close(stored, density, rel=1e-12)  # counts over the same tokens: equal up to float64 rounding
        assert 0 < float(density.max()) < 1


def test_capital_features_promote_the_capital_they_fire_for(labelled: FeatureLabels) -> None:
    """Layer-1 features whose top contexts all answer one capital ('... «is» cap_s') mostly promote cap_s."""
    hits, total = 0, 0
    for feature in labelled.features:
        answers = {c.tokens[c.at + 1].strip() for c in feature.contexts if c.at + 1 < len(c.tokens)}
        marked = {c.tokens[c.at].strip() for c in feature.contexts}
        if feature.layer == 1 and len(feature.contexts) == 5 and marked == {"is"} and len(answers) == 1:
            (capital,) = answers
            if capital.startswith("cap_"):
                total += 1
                assert " | fires on '" in feature.label
                if capital in [t for t, _ in feature.promoted[:3]]:
                    hits += 1
                    assert f"→ {feature.promoted[0][0]!r}" in feature.label
    assert hits >= 2 and hits >= total / 2, (hits, total)


def test_shipped_labels_match_the_toy_transcoders() -> None:
    _, transcoders = _toy_on("cpu")
    path = labels_path(shipped_paths()[1])
    assert path.stat().st_size < 300_000
    labels = load_labels(path.parent)
    assert labels.transcoder_set == transcoders.name
    assert len(labels.features) == transcoders.n_layers * transcoders.d_transcoder
    assert all(f.label.startswith("→ ") for f in labels.features)
    saved = load_labels(labels.save(Path(pytest.importorskip("tempfile").mkdtemp())))
    assert saved.features[300] == labels.features[300]


def test_a_malformed_labels_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "feature_labels.json").write_text('{"format": "other"}')
    with pytest.raises(LabelError, match="is not a circuitbase-feature-labels/1 file"):
        load_labels(tmp_path)


@pytest.mark.neo4j
def test_ingest_writes_labels_onto_the_feature_nodes(clean_db: neo4j.Driver, tmp_path: Path) -> None:
    loaded, transcoders = _toy_on("cpu")  # the database side is the same for every device
    apply_schema(clean_db)
    prompt = Prompt(text="capital of city_3 is", answer="cap_0", id="p0")
    files = [
        path
        for _, path in iter_attribute(
            loaded, transcoders, [prompt], tmp_path, config=AttributionConfig(), show_progress=False
        )
    ]
    tc_dir = shipped_paths()[1]
    summary = ingest_files(clean_db, files, config=IngestConfig(labels=tc_dir))
    records, _, _ = clean_db.execute_query("MATCH (f:Feature) RETURN f {.*} AS f ORDER BY f.key")
    nodes = [r["f"] for r in records]
    assert summary.features_labelled == len(nodes) > 0
    labels = load_labels(tc_dir)
    for node in nodes:
        expected = labels.feature(node["layer"], node["index"])
        assert node["key"] == feature_key(transcoders.name, expected.layer, expected.index)
        assert node["label"] == expected.label and node["label_source"] == "auto"
        assert node["density"] == expected.density
        assert node["top_contexts"] == [c.render() for c in expected.contexts]
        assert node["promoted_tokens"] == [t for t, _ in expected.promoted]
    # a label a person gave is kept when the labels are written again
    key = nodes[0]["key"]
    clean_db.execute_query(
        "MATCH (f:Feature {key: $key}) SET f.label = 'mine', f.label_source = 'api:x'", key=key
    )
    again = ingest_files(clean_db, files, config=IngestConfig(labels=tc_dir))
    assert again.features_labelled == len(nodes) - 1
    records, _, _ = clean_db.execute_query("MATCH (f:Feature {key: $key}) RETURN f.label AS l", key=key)
    assert records[0]["l"] == "mine"
