"""The shipped toy model: task accuracy as built, and the planted two-hop path recovered by attribution.

A state feature is identified by its activation pattern alone: on the trained two-hop prompts it fires
for (nearly) every prompt whose hidden state is s and (nearly) never otherwise. On held-out two-hop
prompts (questions never trained, so the model must compose city -> state -> capital) the graph must
route city token -> state-s feature -> answer logit: the city token among the feature's three strongest
inputs, and the feature among the three features with the largest total influence on the answer logit.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from circuitbase.engine import toy
from circuitbase.engine.attribution import AttributionConfig, attribute
from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.models import LoadedModel, load_model
from circuitbase.engine.replacement import build_replacement_state
from circuitbase.engine.training import train_transcoders
from circuitbase.engine.transcoders import TranscoderSet

SELECTIVITY = 0.95  # fires on >= 95% more of the state's prompts than of the others'


@functools.cache
def _loaded_on(device: str) -> tuple[LoadedModel, TranscoderSet]:
    model_dir, tc_dir = toy.shipped_paths()
    loaded = load_model(str(model_dir), device=device)
    transcoders = TranscoderSet.load(tc_dir, device=device)
    transcoders.validate_for(n_layers=loaded.adapter.n_layers, d_model=loaded.adapter.d_model)
    return loaded, transcoders


@pytest.fixture
def loaded(device: torch.device) -> tuple[LoadedModel, TranscoderSet]:
    """The shipped toy model and transcoders on `device` (loaded once per device)."""
    return _loaded_on(str(device))


def _ids(loaded: LoadedModel, prompt: str) -> torch.Tensor:
    ids = loaded.tokenizer(prompt).input_ids
    return torch.tensor(ids, dtype=torch.long, device=loaded.model.device)


def state_features(loaded: LoadedModel, transcoders: TranscoderSet) -> dict[int, set[tuple[int, int, int]]]:
    """state -> {(layer, position, feature)} selective for it on the trained two-hop prompts."""
    cities = [c for c in range(toy.N_CITIES) if c not in toy.UNKNOWN_CITIES + toy.COMPOSE_CITIES]
    fires = torch.stack(
        [
            torch.stack(
                build_replacement_state(
                    loaded.model, loaded.adapter, transcoders, _ids(loaded, f"capital of city_{c} is")
                ).activations
            )
            > 0
            for c in cities
        ]
    ).float()  # [n_prompts, layers, positions, features]
    states = torch.tensor([toy.state_of(c) for c in cities], device=fires.device)
    found = {}
    for s in range(toy.N_STATES):
        score = fires[states == s].mean(0) - fires[states != s].mean(0)
        found[s] = {tuple(int(v) for v in idx) for idx in torch.nonzero(score >= SELECTIVITY)}
    return found


def total_influence(graph: AttributionGraph) -> torch.Tensor:
    """[n_nodes, n_nodes] sum over path lengths of A^k: the total (direct + indirect) effect."""
    adjacency = graph.dense_adjacency()
    power, total = adjacency, adjacency.clone()
    for _ in range(graph.n_layers + 1):
        power = power @ adjacency
        total += power
    return total


def planted_path_found(
    graph: AttributionGraph, features: set[tuple[int, int, int]], city_position: int
) -> bool:
    """Whether some state feature sits between the city token and the answer logit (see module doc)."""
    nodes = graph.active_features[graph.selected_features]
    dense, total = graph.dense_adjacency(), total_influence(graph)
    answer_row = graph.logit_node(0)
    feature_influence = total[answer_row, : graph.n_features]
    top_features = set(torch.topk(feature_influence, min(3, graph.n_features)).indices.tolist())
    for node, (layer, position, feature) in enumerate(nodes.tolist()):
        if (layer, position, feature) not in features or node not in top_features:
            continue
        strongest_inputs = torch.topk(dense[node].abs(), 3).indices.tolist()
        if graph.token_node(city_position) in strongest_inputs:
            return True
    return False


def test_shipped_metrics_record_accuracy_and_transcoder_quality() -> None:
    metrics = json.loads((toy.SHIPPED_DIR / "metrics.json").read_text())
    accuracy = {k: v["accuracy"] for k, v in metrics["model"]["accuracy"].items()}
    for group in (
        "two_hop/trained",
        "two_hop/compose",
        "one_hop/trained",
        "copy/trained",
        "arithmetic/trained",
    ):
        assert accuracy[group] >= 0.9, group
    assert accuracy["two_hop/unknown"] <= 0.5  # never-trained facts: the wrong-answer material
    for layer in metrics["transcoders"]["layers"]:
        assert layer["fvu"] < 0.15 and layer["l0"] <= 8.0
    assert metrics["transcoders"]["replacement"]["kl"] < 0.1
    truth = json.loads((toy.SHIPPED_DIR / "ground_truth.json").read_text())
    assert truth["city_state"]["city_7"] == f"state_{toy.state_of(7)}"


def test_model_answers_match_the_ground_truth(loaded) -> None:
    model, _ = loaded
    prompts = toy.toy_prompts(40, seed=3)
    assert {p["tags"][0] for p in prompts} == {"two_hop", "one_hop", "copy", "arithmetic"}
    right = 0
    for p in prompts:
        path = toy.planted_path(p["prompt"])
        assert path["answer"] == p["answer"]
        top = int(model.model(_ids(model, p["prompt"])[None]).logits[0, -1].argmax())
        right += model.tokenizer.convert_ids_to_tokens(top) == p["answer"]
    assert right >= 30
    with pytest.raises(toy.ToyError):
        toy.planted_path("the weather is")


def planted_path_rates(model: LoadedModel, transcoders: TranscoderSet) -> tuple[float, float]:
    """(share of held-out two-hop prompts answered right with the planted path found, share where
    another state's features take that place: the control)."""
    features = state_features(model, transcoders)
    assert all(features[s] for s in range(toy.N_STATES)), "every state has a selective feature"
    config = AttributionConfig(max_feature_nodes=None, batch_size=32)
    found, control = [], []
    for city in toy.COMPOSE_CITIES:
        prompt = f"capital of city_{city} is"
        path = toy.planted_path(prompt)
        graph = attribute(model.model, model.adapter, transcoders, _ids(model, prompt), config=config)
        answer = model.tokenizer.convert_ids_to_tokens(int(graph.logit_tokens[0]))
        state = int(path["intermediate"].removeprefix("state_"))
        found.append(answer == path["answer"] and planted_path_found(graph, features[state], 3))
        control.append(planted_path_found(graph, features[(state + 1) % toy.N_STATES], 3))
    print(f"planted two-hop path recovered in {sum(found)}/{len(found)} held-out prompts", end=" ")
    print(f"(another state's features: {sum(control)}/{len(control)})")
    return sum(found) / len(found), sum(control) / len(control)


def test_attribution_recovers_the_planted_two_hop_path(loaded) -> None:
    rate, control = planted_path_rates(*loaded)
    assert rate >= 0.75
    assert control <= 0.25  # another state's features are not on the path


@pytest.mark.slow
def test_shipped_transcoders_match_a_retrain_from_their_seed(tmp_path: Path) -> None:
    """Retrain the toy's transcoders from the shipped model with the shipped settings and seed (the
    training code has changed since, so not bit for bit): as good per layer, and the planted path holds
    in a clear majority of held-out prompts. On the CPU, as the shipped set was built."""
    model, _ = _loaded_on("cpu")
    shipped = json.loads((toy.SHIPPED_DIR / "metrics.json").read_text())["transcoders"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(toy.corpus_lines(seed=0)) + "\n", encoding="utf-8")
    metrics = train_transcoders(
        model.model, model.tokenizer, corpus=corpus, out_dir=tmp_path / "transcoders",
        config=toy.toy_transcoder_config(toy.ToyConfig()),
    )  # fmt: skip
    for mine, theirs in zip(metrics["layers"], shipped["layers"], strict=True):
        assert mine["fvu"] <= theirs["fvu"] + 0.01 and mine["l0"] == pytest.approx(theirs["l0"], abs=0.5)
    assert metrics["replacement"]["kl"] <= shipped["replacement"]["kl"] + 0.01
    rate, control = planted_path_rates(model, TranscoderSet.load(tmp_path / "transcoders"))
    assert rate >= 0.6 and control <= 0.25  # measured: 11/16 and 0/16 (the shipped set: 16/16, 0/16)


def test_toy_training_is_reproducible_from_its_seed() -> None:
    config = toy.ToyConfig(steps=8, batch_size=16)
    first, tokenizer, _ = toy.train_toy_model(config, log=lambda _line: None)
    second, _, _ = toy.train_toy_model(config, log=lambda _line: None)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    ids = tokenizer("capital of city_7 is").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "capital", "of", "city_7", "is"]


def test_toy_model_trains_and_evaluates_on_the_device(loaded, device: torch.device) -> None:
    """Training starts from the same seeded weights on every device (the first batch's loss is equal), and
    the shipped model's accuracies evaluated on `device` are the ones recorded when it was built."""
    config = toy.ToyConfig(steps=1, batch_size=16)  # one step: the reported loss is the first batch's
    model, _, stats = toy.train_toy_model(config, device=device, log=lambda _line: None)
    _, _, cpu_stats = toy.train_toy_model(config, device="cpu", log=lambda _line: None)
    assert all(p.device.type == device.type for p in model.parameters())
    assert stats["final_loss"] == pytest.approx(cpu_stats["final_loss"], rel=1e-5)
    shipped = json.loads((toy.SHIPPED_DIR / "metrics.json").read_text())["model"]["accuracy"]
    measured = toy.evaluate(loaded[0].model)
    assert measured.keys() == shipped.keys()
    for group, result in measured.items():
        assert result["n"] == shipped[group]["n"], group
        # another device (or CPU kernel) may break a near-tie between two logits the other way
        assert abs(result["accuracy"] - shipped[group]["accuracy"]) * result["n"] <= 1, group
