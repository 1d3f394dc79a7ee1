"""Attribution edges equal the effects measured by intervening on the replacement model.

Each check changes one source in the frozen replacement model (attention patterns and norm scales
replayed, every transcoder layer constrained so nothing else responds) and compares the change of a
target with the edge weight the attribution computed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from circuitbase.engine.adapters import adapter_for
from circuitbase.engine.attribution import AttributionConfig, attribute
from circuitbase.engine.interventions import FeatureIntervention, run_with_interventions
from circuitbase.engine.linear_forward import LinearizedPrompt, active_sources
from circuitbase.engine.replacement import build_replacement_state, hooked
from circuitbase.engine.transcoders import TranscoderSet
from tests.numerics import assert_close
from tests.tiny_models import tiny_input_ids, tiny_model

FIXTURES = Path(__file__).parent / "fixtures" / "circuit-tracer-format"
VALIDATION = json.loads((FIXTURES / "validation.json").read_text())
FIXTURE_SETS = ["plt-jumprelu-skip", "plt-relu", "clt-jumprelu"]
EVERYTHING = AttributionConfig(max_feature_nodes=None, batch_size=32)


@pytest.fixture
def tiny_llama(device):
    model = AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny-llama", dtype=torch.float32)
    model = model.to(device).eval()
    return model, adapter_for(model)


def _fixture_input(name: str, device: torch.device) -> torch.Tensor:
    return torch.tensor(VALIDATION["variants"][name]["input_tokens"], device=device)


def _edge(graph, target: int, source: int) -> float:
    return float(graph.dense_adjacency()[target, source])


def _feature_node(graph, layer: int, position: int, feature: int) -> int:
    selected = graph.active_features[graph.selected_features].tolist()
    return selected.index([layer, position, feature])


def _pre_activation(transcoders, mlp_input: torch.Tensor, layer: int, position: int, feature: int) -> float:
    return float(transcoders.pre_activations(layer, mlp_input[position])[feature])


def _centered_logit(logits: torch.Tensor, token: int) -> float:
    last = logits[-1].double()
    return float(last[token] - last.mean())


def _linear_forward(model, adapter, transcoders, state, *, embed_delta=None, const_delta=None):
    """The frozen replacement forward with one source vector changed (forward difference, no gradients)."""
    linear_inputs: list = [None] * adapter.n_layers
    constants = []
    for layer in range(adapter.n_layers):
        skip = transcoders.skip(layer, state.mlp_inputs[layer])
        constant = state.mlp_outputs[layer] - (0 if skip is None else skip)
        if const_delta is not None and const_delta[0] == layer:
            constant = constant.clone()
            constant[const_delta[1]] += const_delta[2]
        constants.append(constant[None])
    embeddings = state.embeddings.clone()
    if embed_delta is not None:
        embeddings[embed_delta[0]] += embed_delta[1]

    def on_in(layer, x):
        linear_inputs[layer] = x[0]

    def on_out(layer, _out):
        skip = transcoders.skip(layer, linear_inputs[layer][None])
        return constants[layer] if skip is None else constants[layer] + skip

    with (
        torch.no_grad(),
        state.freezer.replay(),
        hooked(adapter, on_embeddings=lambda _h: embeddings[None], on_mlp_input=on_in, on_mlp_output=on_out),
    ):
        logits = model(state.input_ids[None].to(embeddings.device)).logits[0]
    return logits, linear_inputs


@pytest.mark.parametrize("name", FIXTURE_SETS)
def test_fixture_sets_match_circuit_tracer(tiny_llama, name, device):
    """Active features and graph size agree with circuit-tracer 0.5.0's figures for the same files."""
    model, adapter = tiny_llama
    transcoders = TranscoderSet.load(FIXTURES / name, device=device)
    expected = VALIDATION["variants"][name]
    graph = attribute(model, adapter, transcoders, _fixture_input(name, device), config=EVERYTHING)
    assert graph.active_features.shape[0] == expected["n_active_features"]
    assert graph.n_nodes == expected["n_nodes"]
    assert graph.n_logits == expected["n_logit_nodes"]
    assert graph.adjacency._nnz() == expected["n_edges_nonzero"]  # same non-zero direct effects
    assert [int(t) for t in graph.logit_tokens] == [item["id"] for item in expected["top_logits"]]
    reference = torch.tensor([row[3] for row in expected["active_features"]])
    assert_close(graph.activations, reference, rel=1e-5)


@pytest.mark.parametrize("name", FIXTURE_SETS)
def test_linear_forward_reproduces_logits(tiny_llama, name, device):
    model, adapter = tiny_llama
    transcoders = TranscoderSet.load(FIXTURES / name, device=device)
    state = build_replacement_state(model, adapter, transcoders, _fixture_input(name, device))
    with torch.no_grad():
        original = model(state.input_ids[None].to(device)).logits[0]
    replaced, _ = _linear_forward(model, adapter, transcoders, state)
    assert_close(replaced, original, rel=1e-5)
    sources = active_sources(state)
    linear = LinearizedPrompt(model, adapter, transcoders, state, sources, batch_size=2)
    assert_close(model.lm_head(linear.final[0]), original, rel=1e-5)


@pytest.mark.parametrize("name", FIXTURE_SETS)
def test_feature_edges_equal_interventions(tiny_llama, name, device):
    """Zeroing a source feature changes a target feature's pre-activation and a logit by -edge."""
    model, adapter = tiny_llama
    transcoders = TranscoderSet.load(FIXTURES / name, device=device)
    ids = _fixture_input(name, device)
    graph = attribute(model, adapter, transcoders, ids, config=EVERYTHING)
    state = build_replacement_state(model, adapter, transcoders, ids)
    selected = graph.active_features[graph.selected_features].tolist()
    layer0 = [f for f in selected if f[0] == 0]
    layer1 = [f for f in selected if f[0] == 1]
    generator = torch.Generator().manual_seed(0)
    checked = 0
    for pick in torch.randperm(len(layer0), generator=generator)[:6].tolist():
        src = layer0[pick]
        target = next(t for t in layer1 if t[1] >= src[1])
        result = run_with_interventions(
            model,
            adapter,
            transcoders,
            state,
            [FeatureIntervention(*src, value=0.0)],
            freeze_attention=True,
            constrained_layers=range(adapter.n_layers),
        )
        before = _pre_activation(transcoders, state.mlp_inputs[1], *target)
        after = _pre_activation(transcoders, result.mlp_inputs[1], *target)
        edge = _edge(graph, _feature_node(graph, *target), _feature_node(graph, *src))
        assert after - before == pytest.approx(-edge, abs=1e-4, rel=1e-3)
        token = int(graph.logit_tokens[0])
        logit_change = _centered_logit(result.logits, token) - _centered_logit(state.logits, token)
        logit_edge = _edge(graph, graph.logit_node(0), _feature_node(graph, *src))
        assert logit_change == pytest.approx(-logit_edge, abs=1e-4, rel=1e-3)
        checked += 1
    assert checked == 6


@pytest.mark.parametrize("name", FIXTURE_SETS)
def test_error_and_token_edges_equal_forward_differences(tiny_llama, name, device):
    model, adapter = tiny_llama
    transcoders = TranscoderSet.load(FIXTURES / name, device=device)
    ids = _fixture_input(name, device)
    graph = attribute(model, adapter, transcoders, ids, config=EVERYTHING)
    state = build_replacement_state(model, adapter, transcoders, ids)
    selected = graph.active_features[graph.selected_features].tolist()
    target = next(t for t in selected if t[0] == 1 and t[1] == 6)
    target_node = _feature_node(graph, *target)
    token = int(graph.logit_tokens[0])
    last = graph.n_positions - 1
    base_logit = _centered_logit(state.logits, token)
    base_pre = _pre_activation(transcoders, state.mlp_inputs[1], *target)

    for position in (2, 6):  # error at layer 0 -> layer-1 feature and -> logit
        logits, inputs = _linear_forward(
            model, adapter, transcoders, state, const_delta=(0, position, -state.errors[0][position])
        )
        edge = _edge(graph, target_node, graph.error_node(0, position))
        assert _pre_activation(transcoders, inputs[1], *target) - base_pre == pytest.approx(
            -edge, abs=1e-4, rel=1e-3
        )
        logit_edge = _edge(graph, graph.logit_node(0), graph.error_node(0, position))
        assert _centered_logit(logits, token) - base_logit == pytest.approx(-logit_edge, abs=1e-4, rel=1e-3)
    for position in (1, 6, last):  # token -> feature and -> logit
        logits, inputs = _linear_forward(
            model, adapter, transcoders, state, embed_delta=(position, -state.embeddings[position])
        )
        logit_edge = _edge(graph, graph.logit_node(0), graph.token_node(position))
        assert _centered_logit(logits, token) - base_logit == pytest.approx(-logit_edge, abs=1e-4, rel=1e-3)
        if position <= target[1]:
            edge = _edge(graph, target_node, graph.token_node(position))
            change = _pre_activation(transcoders, inputs[1], *target) - base_pre
            assert change == pytest.approx(-edge, abs=1e-4, rel=1e-3)


@pytest.mark.parametrize(
    ("family", "cross_layer", "activation"),
    [
        ("llama", False, "jumprelu"),
        ("qwen3", True, "relu"),
        ("gemma2", False, "topk"),
        ("gpt2", True, "jumprelu"),
        ("qwen2", False, "relu"),
        ("gemma3_text", True, "topk"),
    ],
)
def test_families_edges_equal_interventions(family, cross_layer, activation, device):
    """On tiny random models of each family: every feature->logit edge of a sample equals an intervention."""
    model = tiny_model(family).to(device)
    adapter = adapter_for(model)
    transcoders = TranscoderSet.random(
        n_layers=adapter.n_layers,
        d_model=adapter.d_model,
        d_transcoder=48,
        cross_layer=cross_layer,
        activation=activation,
        skip=not cross_layer,
        k=6,
        seed=7,
    ).to(device)
    ids = tiny_input_ids(length=10)[0].to(device)
    graph = attribute(model, adapter, transcoders, ids, config=EVERYTHING)
    state = build_replacement_state(model, adapter, transcoders, ids)
    with torch.no_grad():
        original = model(ids[None]).logits[0]
    replaced, _ = _linear_forward(model, adapter, transcoders, state)
    assert_close(replaced, original, rel=1e-5)
    selected = graph.active_features[graph.selected_features].tolist()
    assert len(selected) > 10
    token = int(graph.logit_tokens[0])
    for src in selected[:: max(1, len(selected) // 5)][:5]:
        result = run_with_interventions(
            model,
            adapter,
            transcoders,
            state,
            [FeatureIntervention(*src, value=0.0)],
            freeze_attention=True,
            constrained_layers=range(adapter.n_layers),
        )
        if adapter.final_logit_softcap() is None:
            change = _centered_logit(result.logits, token) - _centered_logit(state.logits, token)
            edge = _edge(graph, graph.logit_node(0), _feature_node(graph, *src))
            assert change == pytest.approx(-edge, abs=1e-4, rel=1e-3)
        later = [t for t in selected if t[0] > src[0] and t[1] >= src[1]]
        if later:
            target = later[0]
            change = _pre_activation(transcoders, result.mlp_inputs[target[0]], *target) - (
                _pre_activation(transcoders, state.mlp_inputs[target[0]], *target)
            )
            edge = _edge(graph, _feature_node(graph, *target), _feature_node(graph, *src))
            assert change == pytest.approx(-edge, abs=1e-4, rel=1e-3)
