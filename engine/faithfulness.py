"""Faithfulness of an attribution graph: its predicted intervention effects against the real model's.

1. Target: the graph's top logit (rank 0) as a centred logit, (W_U[t] - mean_v W_U[v]) . z with z the
   final normed residual (before any soft-capping), which is what the graph's logit edges explain.
   Nodes: the `nodes` feature nodes of highest influence (`graph.node_influence`).
2. Interventions: each node alone, then the top g nodes together for each g in `group_sizes`; each
   multiplies the activations it names by `scale` (0, the default, ablates them).
3. Predicted (the graph's claim): with attention patterns, norm scales and error nodes frozen and every
   feature in its active region (slope 1), a feature's activation moves by the sum of its incoming
   feature edges, each scaled by its source's relative change. With A the adjacency, a the activations
   and B[t, s] = A[t, s] / a_t over feature nodes, the relative changes r solve r = c + D B r
   (c = scale - 1 and D = scale on the intervened nodes, c = 0 and D = 1 elsewhere; feature edges go to
   later layers, so `n_layers` sweeps solve it exactly). Then target-logit change = A[logit, features] . r
   and activation change = a_t r_t. Every edge the graph computed counts ("edges": "all"); a graph that
   holds only its pruned edges (read from a file saved without keep_full) predicts with those ("pruned").
4. Measured (the real model): `interventions.run_with_interventions` with no layer constrained: the
   intervened features' decoder contributions (a' - a) W_dec leave the residual stream at their layers,
   whose error terms stay as recorded; every later MLP is the model's own (what its transcoder misses
   responds too) and attention patterns and norm scales are recomputed (unless `freeze_attention`).
   Downstream activations are the transcoders' encodings of the real MLP inputs.
5. Scores (`FaithfulnessResult.summary`, stored as scalars in `graph.params["faithfulness"]`):
   - logit_agreement (the headline): 2 m.p / (|m|^2 + |p|^2) over every intervention, m the measured and
     p the predicted target-logit changes: 1 when they are equal, 0 when either is zero or they are
     orthogonal, -1 when opposite; unlike a correlation it counts scale (p = 2m scores 0.8);
   - logit_correlation: Pearson r of p and m over the single-node interventions (blind to scale);
   - pruned_logit_agreement: logit_agreement with predictions from the pruned graph's edges only;
   - logit_share_predicted / logit_share_measured: -change / clean logit for the last (largest) group:
     the share of the target logit those features carry by the graph and in the model;
   - feature_correlation: Pearson r of predicted and measured activation changes of the feature nodes
     downstream of each single intervention (a later layer, the same or a later position).
   A score with nothing to compare (no feature nodes, fewer than 3 points, a constant side) is None.

With transcoders that are the model's MLPs (no error) and frozen attention the real model is the graph's
replacement model, and predicted and measured agree up to features leaving their active region.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from circuitbase.engine.adapters import ModelAdapter
from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.interventions import FeatureIntervention, run_with_interventions
from circuitbase.engine.replacement import build_replacement_state, hooked
from circuitbase.engine.transcoders import TranscoderSet

_MIN_CORRELATION_POINTS = 3


@dataclass(frozen=True)
class FaithfulnessConfig:
    """What a faithfulness check intervenes on and how."""

    nodes: int = 10  # top feature nodes by influence, each intervened on alone
    group_sizes: tuple[int, ...] = (3, 10)  # the top g nodes intervened on together (capped at `nodes`)
    scale: float = 0.0  # activation multiplier of an intervention; 0 ablates
    freeze_attention: bool = False  # True replays the clean attention patterns and norm scales


@dataclass
class FaithfulnessResult:
    """Predicted and measured effects of every intervention of one graph's check."""

    groups: list[list[int]]  # feature node indices of each intervention: singles first, then groups
    target_token: int
    target_logit: float  # the clean centred logit of the target token
    edges: str  # "all" or "pruned": the edges `predicted_logit` and `predicted_features` come from
    predicted_logit: torch.Tensor  # [n_interventions] float64
    pruned_predicted_logit: torch.Tensor  # [n_interventions]: from the pruned graph's edges
    measured_logit: torch.Tensor  # [n_interventions]
    predicted_features: torch.Tensor  # [n_pairs]: downstream activation changes after single interventions
    measured_features: torch.Tensor  # [n_pairs]
    config: FaithfulnessConfig = field(default_factory=FaithfulnessConfig)

    @property
    def n_single(self) -> int:
        return sum(len(group) == 1 for group in self.groups)

    def summary(self) -> dict[str, Any]:
        """JSON scalars for `graph.params["faithfulness"]` (see the module docstring)."""
        single = slice(0, self.n_single)
        predicted, measured = self.predicted_logit, self.measured_logit
        return {
            "nodes": self.n_single,
            "interventions": len(self.groups),
            "largest_group": max((len(group) for group in self.groups), default=0),
            "scale": self.config.scale,
            "freeze_attention": self.config.freeze_attention,
            "edges": self.edges,
            "target_token": self.target_token,
            "target_logit": self.target_logit,
            "logit_agreement": agreement(predicted, measured),
            "logit_correlation": pearson(predicted[single], measured[single]),
            "pruned_logit_agreement": agreement(self.pruned_predicted_logit, measured),
            "logit_share_predicted": _share(predicted, self.target_logit),
            "logit_share_measured": _share(measured, self.target_logit),
            "feature_correlation": pearson(self.predicted_features, self.measured_features),
        }  # no run time: a graph's content (and the database's checksum) must not depend on the machine


def pearson(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Pearson correlation of two 1-D tensors; None with fewer than 3 points or a constant side."""
    if x.numel() < _MIN_CORRELATION_POINTS:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    norm = float(dx.norm() * dy.norm())
    return float((dx * dy).sum()) / norm if norm > 0.0 else None


def agreement(predicted: torch.Tensor, measured: torch.Tensor) -> float | None:
    """2 m.p / (|m|^2 + |p|^2), in [-1, 1] and 1 only when m = p; None when both are zero."""
    energy = float(measured.pow(2).sum() + predicted.pow(2).sum())
    return 2.0 * float((measured * predicted).sum()) / energy if energy > 0.0 else None


def _share(changes: torch.Tensor, logit: float) -> float | None:
    return -float(changes[-1]) / logit if changes.numel() and logit != 0.0 else None


def _interventions(nodes: list[int], group_sizes: Sequence[int]) -> list[list[int]]:
    sizes = sorted({min(size, len(nodes)) for size in group_sizes} - {0, 1})
    return [[node] for node in nodes] + [nodes[:size] for size in sizes]


def predict_effects(
    graph: AttributionGraph, groups: Sequence[Sequence[int]], *, scale: float = 0.0, pruned: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(target-logit changes [n_groups], activation changes [n_features, n_groups]), float64, that the
    graph predicts when each group's feature nodes have their activations multiplied by `scale`
    (default 0: ablated). pruned: only the edges kept by pruning (default False: every edge; a
    ValueError when the graph holds only its pruned ones)."""
    n = graph.n_features
    (targets, sources), values = graph.edges(pruned=pruned)
    values = values.double()
    activations = graph.activations[graph.selected_features].double()
    among = (targets < n) & (sources < n)
    block = torch.sparse_coo_tensor(
        torch.stack([targets[among], sources[among]]),
        values[among] / activations[targets[among]],  # B[t, s] = A[t, s] / a_t
        (n, n),
        check_invariants=False,
    ).coalesce()
    to_logit = (targets == graph.logit_node(0)) & (sources < n)
    logit_row = torch.zeros(n, dtype=torch.float64).index_put_(
        (sources[to_logit],), values[to_logit], accumulate=True
    )
    onehot = torch.zeros(n, len(groups), dtype=torch.float64)
    for column, group in enumerate(groups):
        onehot[list(group), column] = 1.0
    constant = (scale - 1.0) * onehot
    gain = 1.0 + (scale - 1.0) * onehot  # D: `scale` on intervened rows, 1 elsewhere
    relative = constant
    for _ in range(graph.n_layers):  # feature edges go to later layers: n_layers sweeps are exact
        relative = constant + gain * (block @ relative)
    return logit_row @ relative, activations[:, None] * relative


def measure_faithfulness(
    model: nn.Module,
    adapter: ModelAdapter,
    transcoders: TranscoderSet,
    graph: AttributionGraph,
    *,
    config: FaithfulnessConfig | None = None,
) -> FaithfulnessResult:
    """Intervene on the real model and compare with the graph's predictions (see the module docstring).

    `adapter` is bound to the transcoders' hooks, as for attribution; config: default FaithfulnessConfig().
    Costs one recorded forward plus one forward per intervention (`nodes` + len(`group_sizes`) + 1).
    """
    config = config or FaithfulnessConfig()
    if config.nodes < 1:
        raise ValueError(f"a faithfulness check needs nodes >= 1, got {config.nodes}")
    device = adapter.unembedding().device
    state = build_replacement_state(
        model, adapter, transcoders, torch.tensor(graph.input_ids, dtype=torch.long, device=device)
    )
    features = graph.active_features[graph.selected_features]  # [n_features, 3]: layer, position, index
    positions, indices = features[:, 1].to(device), features[:, 2].to(device)
    by_layer = {
        layer: torch.nonzero(features[:, 0] == layer)[:, 0] for layer in features[:, 0].unique().tolist()
    }
    nodes = torch.argsort(graph.node_influence[: graph.n_features], descending=True, stable=True)
    groups = _interventions(nodes[: config.nodes].tolist(), config.group_sizes)
    token = int(graph.logit_tokens[0])
    unembedding = adapter.unembedding().detach()  # a parameter: the target needs no gradient
    direction = (unembedding[token] - unembedding.mean(dim=0)).double()  # the graph's logit target
    final: list[torch.Tensor] = []

    def run(group: Sequence[int]) -> tuple[float, torch.Tensor]:
        """Target centred logit and the feature nodes' activations after intervening on `group`."""
        items = [FeatureIntervention(*features[node].tolist(), scale=config.scale) for node in group]
        final.clear()
        with hooked(adapter, on_unembed_input=lambda z: final.append(z[0, -1])):
            result = run_with_interventions(
                model, adapter, transcoders, state, items, freeze_attention=config.freeze_attention
            )
        activations = torch.zeros(len(features), dtype=torch.float64)
        for layer, rows in by_layer.items():
            activations[rows] = result.activations[layer][positions[rows], indices[rows]].double().cpu()
        return float(direction @ final[0].double()), activations

    clean_logit, clean_activations = run([])
    edges = "pruned" if graph.remainder == "dropped" else "all"
    predicted_logit, predicted_activations = predict_effects(
        graph, groups, scale=config.scale, pruned=edges == "pruned"
    )
    pruned_logit, _ = predict_effects(graph, groups, scale=config.scale, pruned=True)
    measured_logit = torch.zeros(len(groups), dtype=torch.float64)
    none = torch.zeros(0, dtype=torch.float64)
    pairs_predicted, pairs_measured = [none], [none]
    for column, group in enumerate(groups):
        logit, activations = run(group)
        measured_logit[column] = logit - clean_logit
        if len(group) == 1:
            layer, position = features[group[0], 0], features[group[0], 1]
            downstream = (features[:, 0] > layer) & (features[:, 1] >= position)
            pairs_predicted.append(predicted_activations[downstream, column])
            pairs_measured.append((activations - clean_activations)[downstream])
    return FaithfulnessResult(
        groups=groups,
        target_token=token,
        target_logit=clean_logit,
        edges=edges,
        predicted_logit=predicted_logit,
        pruned_predicted_logit=pruned_logit,
        measured_logit=measured_logit,
        predicted_features=torch.cat(pairs_predicted),
        measured_features=torch.cat(pairs_measured),
        config=config,
    )
