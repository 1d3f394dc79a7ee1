"""Export an attribution graph as the graph JSON that Neuronpedia's attribution-graph viewer reads.

Node ids follow circuit-tracer's frontend: features `{layer}_{feature}_{pos}`, errors `{layer}_-1_{pos}`,
tokens `E_{token id}_{pos}`, logits `{n_layers + 1}_{token id}_{pos}`. Only nodes and edges kept by
pruning are written; `links` go from source to target with the direct-effect weight.

The record builders (`feature_record`, `error_record`, `token_record`, `logit_record`) and `document` are
pure, so the API writes a stored graph's view (`circuitbase.api.circuit_tracer`) in the same format.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from circuitbase.engine.graph import AttributionGraph


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def feature_record(
    *, layer: int, feature: int, position: int, influence: float | None, activation: float | None, clerp: str
) -> dict[str, Any]:
    """The node dict of transcoder feature `feature` of `layer` active at `position`."""
    return {
        "node_id": f"{layer}_{feature}_{position}",
        "feature": _cantor(layer, feature),
        "layer": str(layer),
        "ctx_idx": position,
        "feature_type": "cross layer transcoder",
        "jsNodeId": f"{layer}_{feature}-0",
        "clerp": clerp,
        "influence": influence,
        "activation": activation,
    }


def error_record(*, layer: int, position: int, influence: float | None) -> dict[str, Any]:
    """The node dict of the MLP reconstruction error of `layer` at `position`."""
    return {
        "node_id": f"{layer}_-1_{position}",
        "feature": -1,
        "layer": str(layer),
        "ctx_idx": position,
        "feature_type": "mlp reconstruction error",
        "jsNodeId": f"{layer}_-1-{position}",
        "clerp": "",
        "influence": influence,
    }


def token_record(*, token_id: int, position: int, influence: float | None, text: str) -> dict[str, Any]:
    """The node dict of input token `token_id` (reading `text`) at `position`."""
    return {
        "node_id": f"E_{token_id}_{position}",
        "feature": position,
        "layer": "E",
        "ctx_idx": position,
        "feature_type": "embedding",
        "jsNodeId": f"E_{token_id}-{position}",
        "clerp": text,
        "influence": influence,
    }


def logit_record(
    *, token_id: int, position: int, n_layers: int, probability: float, text: str, target: bool
) -> dict[str, Any]:
    """The node dict of output logit `token_id` (reading `text`) at the last `position` of a model of
    `n_layers` layers; `target` marks the top logit."""
    layer = str(n_layers + 1)
    return {
        "node_id": f"{layer}_{token_id}_{position}",
        "feature": token_id,
        "layer": layer,
        "ctx_idx": position,
        "feature_type": "logit",
        "token_prob": probability,
        "is_target_logit": target,
        "jsNodeId": f"L_{token_id}-{position}",
        "clerp": f'Output "{text}" (p={probability:.3f})',
    }


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
        clerp = labels.get((layer, feat), "")
        nodes.append(
            feature_record(
                layer=layer, feature=feat, position=pos, influence=influence[i], activation=act, clerp=clerp
            )
        )
    for layer in range(graph.n_layers):
        for pos in range(graph.n_positions):
            nodes.append(
                error_record(layer=layer, position=pos, influence=influence[graph.error_node(layer, pos)])
            )
    for pos, token_id in enumerate(graph.input_ids):
        text = graph.input_tokens[pos] if pos < len(graph.input_tokens) else ""
        nodes.append(
            token_record(
                token_id=token_id, position=pos, influence=influence[graph.token_node(pos)], text=text
            )
        )
    last = graph.n_positions - 1
    strings = graph.logit_token_strs or [str(t) for t in graph.logit_tokens.tolist()]
    for rank, (token_id, prob) in enumerate(
        zip(graph.logit_tokens.tolist(), graph.logit_probs.tolist(), strict=True)
    ):
        nodes.append(
            logit_record(
                token_id=token_id,
                position=last,
                n_layers=graph.n_layers,
                probability=prob,
                text=strings[rank],
                target=rank == 0,
            )
        )
    return nodes


def document(
    *,
    slug: str,
    scan: str,
    transcoder_set: str,
    prompt: str,
    prompt_tokens: Sequence[str],
    node_threshold: float | None,
    replacement_score: float | None,
    completeness_score: float | None,
    nodes: list[dict[str, Any]],
    links: list[dict[str, Any]],
    pinned_ids: Sequence[str] = (),
    supernodes: Sequence[Sequence[str]] = (),
    clicked_id: str = "",
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The viewer's JSON document (metadata, qParams, nodes, links). qParams: `pinned_ids` (default none),
    `supernodes` as [name, node id, ...] lists (default none), `clicked_id` (default none); `info` (default
    none) adds to metadata.info."""
    return {
        "metadata": {
            "slug": slug,
            "scan": scan,
            "transcoder_list": [transcoder_set],
            "prompt_tokens": list(prompt_tokens),
            "prompt": prompt,
            "node_threshold": node_threshold,
            "schema_version": 1,
            "info": {
                "generator": {"name": "circuitbase"},
                "replacement_score": replacement_score,
                "completeness_score": completeness_score,
                **(info or {}),
            },
        },
        "qParams": {
            "pinnedIds": list(pinned_ids),
            "supernodes": [list(s) for s in supernodes],
            "linkType": "both",
            "clickedId": clicked_id,
            "sg_pos": "",
        },
        "nodes": nodes,
        "links": links,
    }


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
    return document(
        slug=slug,
        scan=scan or graph.model_name,
        transcoder_set=graph.transcoder_name,
        prompt=graph.prompt,
        prompt_tokens=graph.input_tokens,
        node_threshold=graph.params.get("node_threshold"),
        replacement_score=graph.replacement_score,
        completeness_score=graph.completeness_score,
        nodes=nodes,
        links=links,
    )


def write_neuronpedia(graph: AttributionGraph, path: str | Path, *, slug: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(to_neuronpedia(graph, slug=slug)), encoding="utf-8")
    tmp.replace(path)
    return path
