"""The stored rows of an attribution run: influence estimates, the memory cap, reduced precision.

- `RowStore.influence` (credit propagated on the visited block, then one pass over the rows) equals
  pushing credit through every full row until it vanishes, the plain definition.
- Under a row-memory cap too small for full rows, a pool of feature columns is kept: the graph still
  visits every feature asked for, and every edge between its nodes equals the uncapped graph's.
- A cap too small even for that visits fewer features and says so in the graph's params.
- A batch-memory cap runs fewer copies per pass and gives the same graph; the default cap on each device
  is positive and within what the device has.
- bfloat16 weights give edges within a stated bound of float32 ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from circuitbase.engine.adapters import adapter_for
from circuitbase.engine.attribution import (
    AttributionConfig,
    PromptInput,
    _affordable_batch,
    _feature_targets,
    attribute,
    attribute_many,
    memory_note,
    select_logits,
)
from circuitbase.engine.linear_forward import LinearizedPrompt, active_sources
from circuitbase.engine.replacement import build_replacement_state
from circuitbase.engine.row_store import RowStore
from circuitbase.engine.transcoders import TranscoderSet
from tests.numerics import assert_close, max_relative_difference
from tests.tiny_models import tiny_model

FIXTURES = Path(__file__).parent / "fixtures" / "circuit-tracer-format"
BUDGET = 512
BF16_EDGE_BOUND = 0.1  # max |edge error| relative to the largest edge, bfloat16 weights vs float32


@pytest.fixture
def tiny(device):
    model = AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny-llama", dtype=torch.float32)
    transcoders = TranscoderSet.load(FIXTURES / "plt-jumprelu-skip", device=device)
    generator = torch.Generator().manual_seed(3)
    ids = torch.cat([torch.tensor([1]), torch.randint(4, 512, (63,), generator=generator)]).to(device)
    return model.to(device).eval(), transcoders, ids


def _reference_influence(store: RowStore, n_layers: int) -> torch.Tensor:
    """Credit pushed through the full normalised rows step by step (no shortcut), over feature columns."""
    logit_norm = store.logit_rows.abs() / store.logit_rows.abs().sum(1, keepdim=True)
    rows = store.stored_rows()
    norm = rows.abs() / store.sums[: store.n_visited, None]
    current = store.logit_probs @ logit_norm
    total = current.clone()
    for _ in range(n_layers + 1):
        current = current[store.visited] @ norm
        total += current
    return total[: store.n_active]


def test_influence_equals_step_by_step_propagation(tiny, device) -> None:
    model, transcoders, ids = tiny
    adapter = adapter_for(model)
    state = build_replacement_state(model, adapter, transcoders, ids)
    sources = active_sources(state)
    linear = LinearizedPrompt(model, adapter, transcoders, state, sources, batch_size=64)
    logit_ids, logit_probs = select_logits(state.logits[-1], max_logits=10, probability=0.95)
    unembed = adapter.unembedding()
    centered = unembed[logit_ids] - unembed.mean(0, keepdim=True)
    n = len(logit_ids)
    slots = torch.full((n,), adapter.n_layers, device=device)
    logit_rows = linear.rows(slots, torch.full((n,), state.n_positions - 1, device=device), centered)
    store = RowStore(
        logit_rows=logit_rows,
        logit_probs=logit_probs,
        n_active=sources.n_active,
        budget=BUDGET,
        max_bytes=1 << 30,
        n_layers=adapter.n_layers,
        refresh_batches=1,
    )
    for _ in range(3):
        batch = store.next_batch(64)
        store.add(batch, linear.rows(*_feature_targets(transcoders, sources.features[batch])))
    assert store.n_visited == 192
    assert_close(store.influence(), _reference_influence(store, adapter.n_layers), rel=1e-5)


def _node_keys(graph) -> list[tuple]:
    """A key per node that names it across graphs of one prompt: feature, error, token or logit."""
    selected = graph.active_features[graph.selected_features].tolist()
    keys = [("feature", *f) for f in selected]
    keys += [("error", layer, pos) for layer in range(graph.n_layers) for pos in range(graph.n_positions)]
    keys += [("token", pos) for pos in range(graph.n_positions)]
    return keys + [("logit", int(t)) for t in graph.logit_tokens]


def _shared_adjacency(graph, reference) -> tuple[torch.Tensor, torch.Tensor]:
    """Both graphs' adjacency restricted to the nodes they share, in one node order."""
    keys, reference_keys = _node_keys(graph), {k: i for i, k in enumerate(_node_keys(reference))}
    mine = [i for i, k in enumerate(keys) if k in reference_keys]
    theirs = [reference_keys[keys[i]] for i in mine]
    ours = graph.dense_adjacency()[mine][:, mine]
    return ours, reference.dense_adjacency()[theirs][:, theirs]


def test_pool_of_columns_keeps_every_edge_exact(tiny) -> None:
    model, transcoders, ids = tiny
    adapter = adapter_for(model)
    pooled = attribute(
        model,
        adapter,
        transcoders,
        ids,
        config=AttributionConfig(max_feature_nodes=BUDGET, max_row_memory_mb=4),
    )
    full = attribute(model, adapter, transcoders, ids, config=AttributionConfig(max_feature_nodes=None))
    n_active = int(full.active_features.shape[0])
    assert pooled.params["candidate_features"] is not None
    assert BUDGET <= pooled.params["candidate_features"] < n_active
    assert not pooled.params["feature_nodes_capped_by_memory"]
    assert int(pooled.selected_features.numel()) == BUDGET
    assert f"most influential of {n_active} active features" in memory_note(pooled)
    assert memory_note(full) is None

    ours, theirs = _shared_adjacency(pooled, full)
    assert ours.shape[0] == pooled.n_nodes  # every node of the pooled graph is in the full one
    assert int((ours != 0).sum()) > 10_000
    assert_close(ours, theirs, rel=1e-5)


def test_a_cap_too_small_for_the_pool_visits_fewer_features(tiny) -> None:
    model, transcoders, ids = tiny
    adapter = adapter_for(model)
    config = AttributionConfig(max_feature_nodes=BUDGET, max_row_memory_mb=1)
    graph = attribute(model, adapter, transcoders, ids, config=config)
    assert graph.params["feature_nodes_capped_by_memory"]
    n_other = 3 * graph.n_positions  # error nodes of 2 layers and tokens
    visited = int(graph.selected_features.numel())
    assert visited < BUDGET
    assert memory_note(graph).startswith(f"{visited} of {BUDGET} feature nodes visited")
    assert visited * (visited + n_other) * 4 <= 2**20 < (visited + 1) * (visited + 1 + n_other) * 4


def test_a_batch_memory_cap_runs_fewer_copies_and_gives_the_same_graph(tiny, device) -> None:
    model, transcoders, ids = tiny
    adapter = adapter_for(model)
    default = AttributionConfig(max_feature_nodes=BUDGET)
    shapes = {"n_positions": ids.numel(), "d_model": adapter.d_model, "n_layers": adapter.n_layers}
    assert _affordable_batch(default, **shapes, device=torch.device(device)) == default.batch_size
    per_copy = 10 * ids.numel() * adapter.d_model * (adapter.n_layers + 1) * 4
    capped = AttributionConfig(max_feature_nodes=BUDGET, max_batch_memory_mb=1)
    copies = _affordable_batch(capped, **shapes, device=torch.device(device))
    assert copies == 2**20 // per_copy and 1 < copies < default.batch_size

    small = attribute(model, adapter, transcoders, ids, config=capped)
    full = attribute(model, adapter, transcoders, ids, config=default)
    assert (small.params["effective_batch_size"], full.params["effective_batch_size"]) == (copies, 64)
    assert small.params["backward_passes"] > full.params["backward_passes"]
    assert torch.equal(small.selected_features, full.selected_features)
    assert_close(small.dense_adjacency(), full.dense_adjacency(), rel=1e-5)


def test_bfloat16_edges_within_bound_of_float32(tiny) -> None:
    model, transcoders, ids = tiny
    adapter = adapter_for(model)
    config = AttributionConfig(max_feature_nodes=None)
    exact = attribute(model, adapter, transcoders, ids, config=config)
    transcoders16 = TranscoderSet.load(
        FIXTURES / "plt-jumprelu-skip", device=ids.device, dtype=torch.bfloat16
    )
    model16 = model.to(torch.bfloat16)
    reduced = attribute(model16, adapter_for(model16), transcoders16, ids, config=config)
    ours, theirs = _shared_adjacency(reduced, exact)
    assert int((ours != 0).sum()) > 10_000
    error = max_relative_difference(ours, theirs)
    print(f"bfloat16 max edge error: {error:.3g} of the largest edge")
    assert 0 < error <= BF16_EDGE_BOUND


@pytest.mark.parametrize("family", ["llama-fixture", "gemma2"])
def test_prompts_sharing_a_pass_get_the_graphs_they_get_alone(device, family) -> None:
    """Short prompts of different lengths packed into one backward pass (a long one between them runs
    alone) give the graphs `attribute` gives each prompt by itself."""
    if family == "llama-fixture":
        model = AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny-llama", dtype=torch.float32)
        transcoders = TranscoderSet.load(FIXTURES / "plt-jumprelu-skip", device=device)
    else:
        model = tiny_model(family)
        transcoders = TranscoderSet.random(
            n_layers=2, d_model=64, d_transcoder=48, activation="topk", k=6, skip=True, seed=1, device=device
        )
    model = model.to(device).eval()
    adapter = adapter_for(model)
    generator = torch.Generator().manual_seed(5)
    lengths = [3, 2, 4, 60, 2, 3]
    prompts = [
        PromptInput(
            torch.cat([torch.tensor([1]), torch.randint(4, 500, (n - 1,), generator=generator)]).to(device)
        )
        for n in lengths
    ]
    config = AttributionConfig(max_feature_nodes=None, batch_size=512)
    together = attribute_many(model, adapter, transcoders, prompts, config=config)
    alone = [attribute(model, adapter, transcoders, p.input_ids, config=config) for p in prompts]

    shared = [g.params.get("prompts_sharing_the_pass", 1) for g in together]
    assert shared[3] == 1 and max(shared) >= 2  # the long prompt alone, short ones packed
    assert sum(g.params["backward_passes"] for g in together) < sum(
        g.params["backward_passes"] for g in alone
    )
    for packed, single in zip(together, alone, strict=True):
        assert packed.input_ids == single.input_ids
        assert torch.equal(packed.active_features, single.active_features)
        assert torch.equal(packed.selected_features, single.selected_features)
        assert torch.equal(packed.logit_tokens, single.logit_tokens)
        assert_close(packed.dense_adjacency(), single.dense_adjacency(), rel=1e-5)
        assert torch.equal(packed.node_mask, single.node_mask)
