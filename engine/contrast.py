"""Features active in one prompt and not in another: what fed them where they fired, how close they came
where they did not.

1. Run each prompt's recorded forward (`replacement.build_replacement_state`): activations (the set's own
   nonlinearity, `TranscoderSet.encode`) and transcoder inputs. Positions zeroed as BOS are constants, not
   nodes, and count for neither prompt.
2. A (layer, feature) is active in a prompt when its activation is non-zero at some position; keep those
   active in A and at no position of B.
3. In A: the position of its largest activation, and that node's incoming edges in A's attribution graph
   (`AttributionGraph.edges`), the `top_edges` of largest |weight| (negative: inhibitory).
4. In B: each position's pre-activation (`TranscoderSet.pre_activations`) against the firing threshold
   there (`firing_thresholds`: JumpReLU its threshold, ReLU 0, TopK the k-th largest pre-activation of
   the position, at least 0); report the position closest to firing (for ReLU and JumpReLU, the largest
   pre-activation) with its gap, threshold - pre-activation.
5. Rank by the activation in A, largest first; the same with A and B swapped gives the other direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from circuitbase.engine.adapters import ModelAdapter
from circuitbase.engine.attribution import AttributionConfig, attribute
from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.replacement import ReplacementState, build_replacement_state
from circuitbase.engine.transcoders import TranscoderSet


@dataclass(frozen=True)
class SourceNode:
    """A graph node as words: kind "feature" (layer, position, feature), "error" (layer, position) or
    "token" (position)."""

    kind: str
    position: int
    layer: int | None = None
    feature: int | None = None


@dataclass(frozen=True)
class IncomingEdge:
    """One edge into a feature node: its source and direct effect (negative: inhibitory)."""

    source: SourceNode
    weight: float


@dataclass(frozen=True)
class ContrastFeature:
    """A feature active in one prompt (`active`) and silent in the other (`silent`).

    edges: the strongest incoming edges of its node at `position` in the active prompt's graph; empty
    when the graph did not visit that node (`in_graph` False, e.g. past `max_feature_nodes`).
    """

    layer: int
    feature: int
    activation: float  # largest activation in the active prompt
    position: int  # where it is reached
    in_graph: bool
    edges: tuple[IncomingEdge, ...]
    pre_activation: float  # in the silent prompt, at the position closest to firing
    silent_position: int
    threshold: float  # the firing threshold there

    @property
    def gap(self) -> float:
        """How far the pre-activation stays below the threshold (threshold - pre_activation)."""
        return self.threshold - self.pre_activation


@dataclass(frozen=True)
class Contrast:
    """Both directions, each ranked by activation where the feature fires."""

    only_in_a: list[ContrastFeature]
    only_in_b: list[ContrastFeature]


def firing_thresholds(transcoders: TranscoderSet, layer: int, pre: torch.Tensor) -> torch.Tensor:
    """The value pre-activations `pre` [T, d_transcoder] of layer `layer` must pass to fire, broadcastable
    to `pre`: JumpReLU's thresholds, 0 for ReLU, for TopK each position's k-th largest (at least 0)."""
    kind = transcoders.config.activation
    if kind == "jumprelu":
        return transcoders.threshold[layer].to(device=pre.device, dtype=pre.dtype)
    if kind == "topk":
        return pre.topk(transcoders.config.k, dim=-1).values[:, -1:].clamp(min=0)
    return pre.new_zeros(())


def describe_node(graph: AttributionGraph, node: int) -> SourceNode:
    """What node index `node` of `graph` is (see `graph` for the node order); logits are not sources."""
    if node < graph.error_offset:
        layer, position, feature = graph.active_features[graph.selected_features[node]].tolist()
        return SourceNode("feature", position, layer, feature)
    if node < graph.token_offset:
        layer, position = divmod(node - graph.error_offset, graph.n_positions)
        return SourceNode("error", position, layer)
    if node < graph.logit_offset:
        return SourceNode("token", node - graph.token_offset)
    raise ValueError(f"node {node} is a logit node, which has no outgoing edges")


def contrast(
    model: nn.Module,
    adapter: ModelAdapter,
    transcoders: TranscoderSet,
    input_ids_a: torch.Tensor,
    input_ids_b: torch.Tensor,
    *,
    graph_a: AttributionGraph | None = None,
    graph_b: AttributionGraph | None = None,
    top_edges: int = 5,
    pruned: bool = False,
    config: AttributionConfig | None = None,
) -> Contrast:
    """Features active in prompt A and nowhere in B, and the reverse (1-D token ids each).

    graph_a / graph_b: the prompts' attribution graphs (default: attributed here with `config`, default
    `AttributionConfig()`). top_edges: incoming edges kept per feature (default 5). pruned: take edges
    from the pruned graph only (default False: every edge the graph holds).
    """
    states = [build_replacement_state(model, adapter, transcoders, ids) for ids in (input_ids_a, input_ids_b)]
    for name, state in zip("AB", states, strict=True):
        if state.n_positions <= state.zeroed_positions:
            raise ValueError(f"prompt {name} has no token after its start token")
    graphs = []
    for name, ids, state, graph in zip(
        "AB", (input_ids_a, input_ids_b), states, (graph_a, graph_b), strict=True
    ):
        if graph is None:
            graph = attribute(model, adapter, transcoders, ids, config=config)
        elif graph.input_ids != state.input_ids.tolist():
            raise ValueError(f"graph {name} was made from other token ids than prompt {name}")
        graphs.append(graph)
    a, b = states
    return Contrast(
        only_in_a=_one_way(transcoders, a, b, graphs[0], top_edges=top_edges, pruned=pruned),
        only_in_b=_one_way(transcoders, b, a, graphs[1], top_edges=top_edges, pruned=pruned),
    )


def _one_way(
    transcoders: TranscoderSet,
    active: ReplacementState,
    silent: ReplacementState,
    graph: AttributionGraph,
    *,
    top_edges: int,
    pruned: bool,
) -> list[ContrastFeature]:
    """Features active in `active` and silent everywhere in `silent`, ranked by activation."""
    incoming = _Incoming(graph, pruned=pruned)
    found: list[ContrastFeature] = []
    skip = silent.zeroed_positions
    for layer in range(transcoders.n_layers):
        acts, silent_acts = active.activations[layer], silent.activations[layer]
        features = torch.nonzero((acts != 0).any(0) & ~(silent_acts != 0).any(0)).squeeze(1)
        if features.numel() == 0:
            continue
        values, positions = acts[:, features].masked_fill(acts[:, features] == 0, -torch.inf).max(0)
        pre = transcoders.pre_activations(layer, silent.mlp_inputs[layer][skip:])
        threshold = firing_thresholds(transcoders, layer, pre).expand_as(pre)[:, features]
        gap, closest = (threshold - pre[:, features]).min(0)
        pre_at = pre[:, features].gather(0, closest[None])[0]
        rows = zip(features.tolist(), values.tolist(), positions.tolist(), pre_at.tolist(),
                   (closest + skip).tolist(), (pre_at + gap).tolist(), strict=True)  # fmt: skip
        for feature, value, position, pre_value, silent_position, threshold_value in rows:
            node = incoming.node_of(layer, position, feature)
            found.append(
                ContrastFeature(
                    layer=layer,
                    feature=feature,
                    activation=value,
                    position=position,
                    in_graph=node is not None,
                    edges=() if node is None else incoming.top(node, top_edges),
                    pre_activation=pre_value,
                    silent_position=silent_position,
                    threshold=threshold_value,
                )
            )
    found.sort(key=lambda f: -f.activation)
    return found


class _Incoming:
    """A graph's edges grouped by target node, and its feature nodes by (layer, position, feature)."""

    def __init__(self, graph: AttributionGraph, *, pruned: bool) -> None:
        self.graph = graph
        indices, self.weights = graph.edges(pruned=pruned)
        self.targets, self.sources = indices[0], indices[1]  # sorted by target (coalesced, row-major)
        selected = graph.active_features[graph.selected_features].tolist()
        self.nodes = {tuple(key): node for node, key in enumerate(selected)}

    def node_of(self, layer: int, position: int, feature: int) -> int | None:
        return self.nodes.get((layer, position, feature))

    def top(self, node: int, k: int) -> tuple[IncomingEdge, ...]:
        """The k incoming edges of `node` of largest |weight|."""
        bounds = torch.searchsorted(self.targets, torch.tensor([node, node + 1], device=self.targets.device))
        start, stop = bounds.tolist()
        weights = self.weights[start:stop]
        order = weights.abs().argsort(descending=True)[:k]
        return tuple(
            IncomingEdge(describe_node(self.graph, source), weight)
            for source, weight in zip(
                self.sources[start:stop][order].tolist(), weights[order].tolist(), strict=True
            )
        )
