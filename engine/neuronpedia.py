"""Export an attribution graph as the graph JSON that Neuronpedia's attribution-graph viewer reads.

Node ids follow circuit-tracer's frontend: features `{layer}_{feature}_{pos}`, errors `{layer}_-1_{pos}`,
tokens `E_{token id}_{pos}`, logits `{n_layers + 1}_{token id}_{pos}`. Only nodes and edges kept by
pruning are written; `links` go from source to target with the direct-effect weight.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from circuitbase.engine.graph import AttributionGraph


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def node_records(
    graph: AttributionGraph, labels: dict[tuple[int, int], str] | None = None
) -> list[dict[str, Any]]:
    """One Neuronpedia node dict per graph node, in node order (pruned nodes included)."""
    labels = labels or {}
    influence = graph.node_influence.tolist()
    nodes: list[dict[str, Any]] = []
    selected = graph.active_features[graph.selected_features].tolist()
    acts = graph.activations[graph.selected_features].tolist()
    for i, ((layer, pos, feat), act) in enumerate(zip(selected, acts, strict=True)):
        nodes.append(
            {
                "node_id": f"{layer}_{feat}_{pos}",
                "feature": _cantor(layer, feat),
                "layer": str(layer),
                "ctx_idx": pos,
                "feature_type": "cross layer transcoder",
                "jsNodeId": f"{layer}_{feat}-0",
                "clerp": labels.get((layer, feat), ""),
                "influence": influence[i],
                "activation": act,
            }
        )
    for layer in range(graph.n_layers):
        for pos in range(graph.n_positions):
            nodes.append(
                {
                    "node_id": f"{layer}_-1_{pos}",
                    "feature": -1,
                    "layer": str(layer),
                    "ctx_idx": pos,
                    "feature_type": "mlp reconstruction error",
                    "jsNodeId": f"{layer}_-1-{pos}",
                    "clerp": "",
                    "influence": influence[graph.error_node(layer, pos)],
                }
            )
    for pos, token_id in enumerate(graph.input_ids):
        nodes.append(
            {
                "node_id": f"E_{token_id}_{pos}",
                "feature": pos,
                "layer": "E",
                "ctx_idx": pos,
                "feature_type": "embedding",
                "jsNodeId": f"E_{token_id}-{pos}",
                "clerp": graph.input_tokens[pos] if pos < len(graph.input_tokens) else "",
                "influence": influence[graph.token_node(pos)],
            }
        )
    last = graph.n_positions - 1
    strings = graph.logit_token_strs or [str(t) for t in graph.logit_tokens.tolist()]
    for rank, (token_id, prob) in enumerate(
        zip(graph.logit_tokens.tolist(), graph.logit_probs.tolist(), strict=True)
    ):
        layer = str(graph.n_layers + 1)
        nodes.append(
            {
                "node_id": f"{layer}_{token_id}_{last}",
                "feature": token_id,
                "layer": layer,
                "ctx_idx": last,
                "feature_type": "logit",
                "token_prob": prob,
                "is_target_logit": rank == 0,
                "jsNodeId": f"L_{token_id}-{last}",
                "clerp": f'Output "{strings[rank]}" (p={prob:.3f})',
            }
        )
    return nodes


def to_neuronpedia(
    graph: AttributionGraph, *, slug: str, scan: str = "", labels: dict[tuple[int, int], str] | None = None
) -> dict[str, Any]:
    """The viewer's JSON document (metadata, qParams, nodes, links) for the pruned graph."""
    all_nodes = node_records(graph, labels)
    keep = graph.node_mask.tolist()
    nodes = [node for node, kept in zip(all_nodes, keep, strict=True) if kept]
    (targets, sources), weights = graph.edges(pruned=True)
    links = [
        {"source": all_nodes[s]["node_id"], "target": all_nodes[t]["node_id"], "weight": w}
        for t, s, w in zip(targets.tolist(), sources.tolist(), weights.tolist(), strict=True)
    ]
    return {
        "metadata": {
            "slug": slug,
            "scan": scan or graph.model_name,
            "transcoder_list": [graph.transcoder_name],
            "prompt_tokens": graph.input_tokens,
            "prompt": graph.prompt,
            "node_threshold": graph.params.get("node_threshold"),
            "schema_version": 1,
            "info": {
                "generator": {"name": "circuitbase"},
                "replacement_score": graph.replacement_score,
                "completeness_score": graph.completeness_score,
            },
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def write_neuronpedia(graph: AttributionGraph, path: str | Path, *, slug: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(to_neuronpedia(graph, slug=slug)), encoding="utf-8")
    tmp.replace(path)
    return path
