"""Faithfulness checks: a graph's predicted intervention effects against the real model's.

- Perfect transcoders: in a GPT-2 whose MLPs use ReLU, the MLPs *are* ReLU transcoders, so with frozen
  attention the real model is the graph's replacement model and predicted and measured effects agree.
  The model is split so that the first layer's features reach the logits only through the second
  layer's MLP (tokens and the first MLP write one half of the residual stream, the second MLP the other
  half, which alone the unembedding reads; attention writes nothing): an indirect path must be right.
- The same model with a set whose second layer never fires: that MLP is all error, so the graph misses
  the path the model uses, and predicted and measured effects disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from circuitbase.engine.adapters import adapter_for
from circuitbase.engine.attribution import AttributionConfig, attribute
from circuitbase.engine.faithfulness import (
    FaithfulnessConfig,
    agreement,
    measure_faithfulness,
    pearson,
    predict_effects,
)
from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.models import load_model
from circuitbase.engine.prompts import Prompt
from circuitbase.engine.runner import iter_attribute
from circuitbase.engine.transcoders import TranscoderSet
from tests.known_answer_models import IDS, error_only_llama, perfect_transcoders, relu_gpt2
from tests.numerics import assert_close
from tests.tiny_models import tiny_input_ids, tiny_model

EVERYTHING = AttributionConfig(max_feature_nodes=None, batch_size=16)
FROZEN = FaithfulnessConfig(freeze_attention=True)
FIXTURES = Path(__file__).parent / "fixtures" / "circuit-tracer-format"


def _split_relu_gpt2() -> GPT2LMHeadModel:
    model = relu_gpt2(tie_word_embeddings=False)
    half = 16
    with torch.no_grad():
        model.transformer.wte.weight[:, half:] = 0
        model.transformer.wpe.weight[:, half:] = 0
        for block in model.transformer.h:
            block.attn.c_proj.weight.zero_()
            block.attn.c_proj.bias.zero_()
        first, second = model.transformer.h[0].mlp.c_proj, model.transformer.h[1].mlp.c_proj
        first.weight[:, half:] = 0  # Conv1D stores [in, out]
        first.bias[half:] = 0
        second.weight[:, :half] = 0
        second.bias[:half] = 0
        model.lm_head.weight[:, :half] = 0
    return model


def _second_layer_silent(perfect: TranscoderSet) -> TranscoderSet:
    weights = perfect.weights()
    weights.b_enc[1] = torch.full_like(weights.b_enc[1], -1e6)  # never fires: its MLP is all error
    return TranscoderSet(perfect.config, weights)


def _ids(device: torch.device) -> torch.Tensor:
    return torch.tensor(IDS, device=device)


def _check(model, transcoders, device, config=FROZEN):
    model = model.to(device)
    adapter = adapter_for(model)
    transcoders = transcoders.to(device)
    graph = attribute(model, adapter, transcoders, _ids(device), config=EVERYTHING)
    return graph, measure_faithfulness(model, adapter, transcoders, graph, config=config)


def test_perfect_transcoders_agree_and_an_error_only_layer_does_not(device: torch.device):
    model = _split_relu_gpt2()
    perfect = perfect_transcoders(model)
    graph, result = _check(model, perfect, device)
    scores = result.summary()
    assert scores["nodes"] == 10 and scores["interventions"] == 12 and scores["edges"] == "all"
    features = graph.active_features[graph.selected_features]
    assert any(features[group[0], 0] == 0 for group in result.groups[:10])  # first-layer nodes were tested
    assert scores["logit_agreement"] > 0.99
    assert scores["logit_correlation"] > 0.99
    assert scores["feature_correlation"] > 0.99
    assert scores["logit_share_measured"] == pytest.approx(scores["logit_share_predicted"], rel=0.15)

    _, silent = _check(model, _second_layer_silent(perfect), device)
    missed = silent.summary()
    assert missed["logit_agreement"] < 0.5
    assert missed["feature_correlation"] is None  # no feature node downstream of the first layer
    # the model's effects run through the second MLP, which the graph holds fixed as error
    assert float(silent.measured_logit.abs().sum()) > 3 * float(silent.predicted_logit.abs().sum())


def test_small_scalings_follow_the_graph_exactly(device: torch.device):
    """Scaling by 0.9 keeps every feature of the graph in its active region and no inactive one turns on
    (scaling the top 10 together does turn one on): the linear prediction is exact."""
    model = _split_relu_gpt2()
    _, result = _check(
        model,
        perfect_transcoders(model),
        device,
        FaithfulnessConfig(scale=0.9, group_sizes=(3,), freeze_attention=True),
    )
    assert_close(result.predicted_logit, result.measured_logit, rel=1e-3)
    assert_close(result.predicted_features, result.measured_features, rel=1e-3)


def test_free_attention_is_measured_on_the_real_model(device: torch.device):
    """The default recomputes attention: the measured effects move away from the frozen prediction."""
    model = relu_gpt2()
    transcoders = perfect_transcoders(model)
    _, frozen = _check(model, transcoders, device)
    _, free = _check(model, transcoders, device, FaithfulnessConfig())
    assert_close(free.predicted_logit, frozen.predicted_logit, rel=1e-9)
    assert frozen.summary()["logit_agreement"] > 0.99
    difference = float((free.measured_logit - frozen.measured_logit).abs().max())
    assert difference > 0.1 * float(frozen.measured_logit.abs().max())
    assert free.summary()["logit_agreement"] < frozen.summary()["logit_agreement"]


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_last_layer_features_match_through_the_final_norm(family: str, device: torch.device):
    """A last-layer feature reaches the logits only through the frozen final norm (the target is read
    before Gemma 2's softcap, as the graph's logit edges are): even with random transcoders its measured
    effect equals the predicted one."""
    model = tiny_model(family).to(device)
    adapter = adapter_for(model)
    transcoders = TranscoderSet.random(
        n_layers=adapter.n_layers, d_model=adapter.d_model, d_transcoder=48, activation="relu", seed=7
    ).to(device)
    ids = tiny_input_ids(length=10)[0].to(device)
    graph = attribute(model, adapter, transcoders, ids, config=EVERYTHING)
    config = FaithfulnessConfig(nodes=40, group_sizes=(), freeze_attention=True)
    result = measure_faithfulness(model, adapter, transcoders, graph, config=config)
    last = graph.active_features[graph.selected_features][:, 0] == adapter.n_layers - 1
    singles = [column for column, group in enumerate(result.groups) if last[group[0]]]
    assert len(singles) >= 3
    assert_close(result.predicted_logit[singles], result.measured_logit[singles], rel=1e-3)


def test_a_graph_without_features_has_no_scores(device: torch.device):
    model, silent = error_only_llama()
    graph, result = _check(model, silent, device, FaithfulnessConfig())
    scores = result.summary()
    assert graph.n_features == 0 and scores["nodes"] == 0 and scores["interventions"] == 0
    for name in ("logit_agreement", "logit_correlation", "feature_correlation", "logit_share_measured"):
        assert scores[name] is None
    json.dumps(scores, allow_nan=False)


def test_predictions_compound_through_the_graph():
    """Two-node chain f0 -> f1 -> logit: ablating f0 removes its direct effect and f1's share of it."""
    n_nodes = 2 + 2 * 1 + 1 + 1  # 2 features, 2 layers x 1 position of errors, 1 token, logit node 5
    indices = torch.tensor([[1, 5, 5], [0, 0, 1]])  # (target, source): f0 -> f1, f0 -> logit, f1 -> logit
    values = torch.tensor([0.5, 2.0, 4.0])
    adjacency = torch.sparse_coo_tensor(indices, values, (n_nodes, n_nodes), check_invariants=True)
    graph = AttributionGraph(
        prompt="x", input_ids=[7], input_tokens=["x"], model_name="m", transcoder_name="t", n_layers=2,
        active_features=torch.tensor([[0, 0, 0], [1, 0, 0]]), activations=torch.tensor([1.0, 2.0]),
        selected_features=torch.tensor([0, 1]), logit_tokens=torch.tensor([7]),
        logit_probs=torch.tensor([1.0]),
        adjacency=adjacency.coalesce(),
        node_influence=torch.zeros(n_nodes), node_mask=torch.ones(n_nodes, dtype=torch.bool),
        edge_mask=torch.tensor([True, True, False]), replacement_score=1.0, completeness_score=1.0,
    )  # fmt: skip
    logit, activations = predict_effects(graph, [[0], [1], [0, 1]])
    # f0 ablated: f1 loses 0.5 of its 2.0 (a quarter), so the logit loses 2.0 + 4.0 / 4
    assert_close(logit, torch.tensor([-3.0, -4.0, -6.0], dtype=torch.float64))
    assert_close(activations[:, 0], torch.tensor([-1.0, -0.5], dtype=torch.float64))
    halved, _ = predict_effects(graph, [[0]], scale=0.5)
    assert_close(halved, torch.tensor([-1.5], dtype=torch.float64))
    pruned, _ = predict_effects(graph, [[0], [1]], pruned=True)  # f1 -> logit is pruned
    assert_close(pruned, torch.tensor([-2.0, 0.0], dtype=torch.float64))


def test_score_definitions():
    measured = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    assert agreement(measured, measured) == pytest.approx(1.0)
    assert agreement(2 * measured, measured) == pytest.approx(0.8)
    assert agreement(torch.zeros(3, dtype=torch.float64), measured) == 0.0
    assert agreement(-measured, measured) == pytest.approx(-1.0)
    assert pearson(2 * measured + 1, measured) == pytest.approx(1.0)
    assert pearson(torch.ones(3, dtype=torch.float64), measured) is None
    assert pearson(measured[:2], measured[:2]) is None


def test_the_runner_stores_the_check_in_the_graph_file(tmp_path, device: torch.device):
    loaded = load_model(str(FIXTURES / "tiny-llama"), device=device)
    transcoders = TranscoderSet.load(FIXTURES / "plt-relu", device=device)
    prompt = Prompt(text="the cat sat on the mat", answer=" the", id="p0")
    config = AttributionConfig(max_feature_nodes=64, check_faithfulness=True)
    [(_, path)] = list(
        iter_attribute(loaded, transcoders, [prompt], tmp_path, config=config, show_progress=False)
    )
    graph = AttributionGraph.load(path)
    stored = graph.params["faithfulness"]
    assert graph.params["check_faithfulness"] is True
    assert stored["nodes"] == 10 and stored["edges"] == "all"
    assert -1.0 <= stored["logit_agreement"] <= 1.0
    again = measure_faithfulness(loaded.model, loaded.adapter, transcoders, graph).summary()
    assert again["edges"] == "pruned"  # the file holds the pruned graph only
    assert again["logit_share_measured"] == pytest.approx(stored["logit_share_measured"], rel=1e-5)
