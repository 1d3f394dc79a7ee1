"""Features active in one prompt and silent in another (`engine.contrast`), on the tiny fixture model.

- Every reported feature fires in the active prompt at the reported position with the reported value,
  recomputed here from the encoder weights, and its pre-activation stays at or below its threshold at
  every position of the silent prompt, the largest equal to the reported one.
- The set of reported features is exactly the set active in one prompt and in no position of the other.
- The incoming edges are the graph's adjacency entries into that node, strongest first.
- The firing thresholds (ReLU, JumpReLU, TopK) separate active from silent pre-activations.
- Swapping the prompts swaps the two lists; `circuitbase contrast --json` prints the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from circuitbase.cli import app
from circuitbase.engine.adapters import adapter_for
from circuitbase.engine.attribution import attribute
from circuitbase.engine.contrast import Contrast, ContrastFeature, SourceNode, contrast, firing_thresholds
from circuitbase.engine.prompts import prompt_token_ids
from circuitbase.engine.replacement import build_replacement_state, hooks_of
from circuitbase.engine.transcoders import TranscoderSet
from tests.numerics import assert_close

FIXTURES = Path(__file__).parent / "fixtures" / "circuit-tracer-format"
MODEL, SET = FIXTURES / "tiny-llama", FIXTURES / "plt-jumprelu-skip"
PROMPTS = ("The capital of France is", "The capital of Italy is the city of")


@pytest.fixture
def setup(device):
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).to(device).eval()
    transcoders = TranscoderSet.load(SET, device=device)
    adapter = adapter_for(model).with_hooks(hooks_of(transcoders))
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    ids = [torch.tensor(prompt_token_ids(tokenizer, p), device=device) for p in PROMPTS]
    graphs = [attribute(model, adapter, transcoders, i) for i in ids]
    result = contrast(model, adapter, transcoders, *ids, graph_a=graphs[0], graph_b=graphs[1])
    return model, adapter, transcoders, ids, graphs, result


def _pre_activations(model, adapter, transcoders, ids) -> list[torch.Tensor]:
    """Per layer [T, d_tc]: W_enc x + b_enc from the recorded MLP inputs, by hand."""
    state = build_replacement_state(model, adapter, transcoders, ids)
    return [
        x.double() @ transcoders.W_enc[layer].double().T + transcoders.b_enc[layer].double()
        for layer, x in enumerate(state.mlp_inputs)
    ]


def _check_direction(found: list[ContrastFeature], pre_active, pre_silent, transcoders) -> None:
    """Active where reported with the reported value, silent at every non-BOS position of the other."""
    assert found, "the two prompts differ in some feature"
    assert [f.activation for f in found] == sorted((f.activation for f in found), reverse=True)
    for f in found:
        threshold = transcoders.threshold[f.layer][f.feature].double()
        here = pre_active[f.layer][1:, f.feature]  # position 0 is BOS: a constant, not a node
        assert float(here.max()) > float(threshold)
        assert int(here.argmax()) + 1 == f.position
        assert_close(torch.tensor([f.activation]), here.max()[None].float(), rel=1e-5)
        there = pre_silent[f.layer][1:, f.feature]
        assert float(there.max()) <= float(threshold)
        assert int(there.argmax()) + 1 == f.silent_position
        assert_close(torch.tensor([f.pre_activation]), there.max()[None].float(), rel=1e-5)
        assert_close(torch.tensor([f.threshold]), threshold[None].float(), rel=1e-6)
        assert f.gap >= 0


def _expected_sets(pre_a, pre_b, transcoders) -> tuple[set, set]:
    fires = [
        [(pre[1:] > transcoders.threshold[layer].double()).any(0) for layer, pre in enumerate(p)]
        for p in (pre_a, pre_b)
    ]
    only = []
    for x, y in ((0, 1), (1, 0)):
        only.append(
            {
                (layer, f)
                for layer in range(transcoders.n_layers)
                for f in torch.nonzero(fires[x][layer] & ~fires[y][layer]).flatten().tolist()
            }
        )
    return only[0], only[1]


def test_reported_features_fire_in_one_prompt_only(setup) -> None:
    model, adapter, transcoders, ids, _graphs, result = setup
    pre_a, pre_b = (_pre_activations(model, adapter, transcoders, i) for i in ids)
    _check_direction(result.only_in_a, pre_a, pre_b, transcoders)
    _check_direction(result.only_in_b, pre_b, pre_a, transcoders)
    only_a, only_b = _expected_sets(pre_a, pre_b, transcoders)
    assert {(f.layer, f.feature) for f in result.only_in_a} == only_a
    assert {(f.layer, f.feature) for f in result.only_in_b} == only_b


def _node(graph, source: SourceNode) -> int:
    if source.kind == "token":
        return graph.token_node(source.position)
    if source.kind == "error":
        return graph.error_node(source.layer, source.position)
    key = [source.layer, source.position, source.feature]
    selected = graph.active_features[graph.selected_features].tolist()
    return selected.index(key)


def test_incoming_edges_are_the_graphs_entries(setup) -> None:
    *_, graphs, result = setup
    for graph, found in zip(graphs, (result.only_in_a, result.only_in_b), strict=True):
        dense = graph.dense_adjacency()
        selected = graph.active_features[graph.selected_features].tolist()
        for f in found:
            assert f.in_graph  # the tiny graphs visit every active feature
            target = selected.index([f.layer, f.position, f.feature])
            row = dense[target]
            assert len(f.edges) == min(5, int((row != 0).sum()))
            strongest = row.abs().sort(descending=True).values[: len(f.edges)]
            assert_close(torch.tensor([abs(e.weight) for e in f.edges]), strongest, rel=1e-6)
            for edge in f.edges:
                assert edge.weight == float(row[_node(graph, edge.source)])


def test_swapping_the_prompts_swaps_the_lists(setup) -> None:
    model, adapter, transcoders, ids, graphs, result = setup
    swapped = contrast(model, adapter, transcoders, ids[1], ids[0], graph_a=graphs[1], graph_b=graphs[0])
    assert swapped == Contrast(only_in_a=result.only_in_b, only_in_b=result.only_in_a)


def test_graphs_made_inside_equal_the_given_ones(setup) -> None:
    model, adapter, transcoders, ids, _graphs, result = setup
    assert contrast(model, adapter, transcoders, *ids) == result


def test_a_graph_of_another_prompt_is_refused(setup) -> None:
    model, adapter, transcoders, ids, graphs, _result = setup
    with pytest.raises(ValueError, match="graph B was made from other token ids"):
        contrast(model, adapter, transcoders, *ids, graph_a=graphs[0], graph_b=graphs[0])


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
def test_thresholds_split_active_from_silent(device, activation) -> None:
    transcoders = TranscoderSet.random(
        n_layers=2, d_model=16, d_transcoder=64, activation=activation, k=8, device=device
    )
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1)).to(device)
    for layer in range(2):
        pre = transcoders.pre_activations(layer, x)
        active = transcoders.activate(layer, pre) != 0
        threshold = firing_thresholds(transcoders, layer, pre).expand_as(pre)
        assert active.any() and (~active).any()
        assert bool((pre[active] >= threshold[active]).all())
        assert bool((pre[~active] <= threshold[~active]).all())
        if activation == "topk":  # the k-th largest is the weakest active value (all positive here or 0)
            assert_close(threshold[:, 0], pre.topk(8).values[:, -1].clamp(min=0))


def _invoke(*args: str):
    base = ["contrast", *args, "--model", str(MODEL), "--transcoders", str(SET), "--device", "cpu"]
    return CliRunner().invoke(app, base)


def test_cli_prints_the_engine_numbers() -> None:
    loaded = _invoke(*PROMPTS, "--json", "--edges", "3")
    assert loaded.exit_code == 0, loaded.output
    report = json.loads(loaded.stdout)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    transcoders = TranscoderSet.load(SET)
    adapter = adapter_for(model).with_hooks(hooks_of(transcoders))
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    ids = [torch.tensor(prompt_token_ids(tokenizer, p)) for p in PROMPTS]
    expected = contrast(model, adapter, transcoders, *ids, top_edges=3)
    for key, features in (("only_in_a", expected.only_in_a), ("only_in_b", expected.only_in_b)):
        rows = report[key]
        assert [(r["layer"], r["feature"], r["position"]) for r in rows] == [
            (f.layer, f.feature, f.position) for f in features
        ]
        assert_close(
            torch.tensor([r["activation"] for r in rows]), torch.tensor([f.activation for f in features])
        )
        assert_close(torch.tensor([r["gap"] for r in rows]), torch.tensor([f.gap for f in features]))
        assert all(len(r["edges"]) == len(f.edges) for r, f in zip(rows, features, strict=True))
    tables = _invoke(*PROMPTS, "--top", "2")
    assert tables.exit_code == 0, tables.output
    assert "active in A, silent in B (2 of" in tables.stdout and "active in B, silent in A" in tables.stdout


def test_cli_refuses_an_empty_prompt() -> None:
    result = _invoke("The capital of France is", "  ")
    assert result.exit_code == 1
    assert "prompt B is empty" in result.output
