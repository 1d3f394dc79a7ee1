"""A graph view as the dashboard draws it, as the JSON text of one compact object (`GraphView.compact`).

Built from the one row of `cypher/graph_view.cypher` (no per-node loading), encoded once and cached as
text by the server (`circuitbase.api.cache`): a view costs one query the first time and after that, until
the database changes, neither a query of its own (the cache's state token is read once per request) nor
an encoding (encoding the object again for every request doubled the graph page's latency at 8 clients).
Columns (a list per field), not an object per node or edge:
- `tokens`: the prompt's tokens (one per position);
- `nodes`, one entry per kept node in `idx` order: `node` (the Neuronpedia node id), `kind` (FEATURE,
  ERROR, TOKEN or LOGIT), `layer`, `position`, `featureIndex`, `influence`, `activation`, `probability`,
  `text` (the node in words, as `GraphNode.text`), `feature` (its index in `features`, null for other
  kinds or a Feature not stored) and `token` (a token or logit node's token text);
- `features`, one entry per distinct Feature: `key`, `label` and `description` (as `Feature.description`);
  not its top contexts, which a tooltip loads when it shows them (five per feature would be 40% of the
  payload);
- `supernodes`: the manual supernodes (defined by a person) with members here, each `key`, `name` and
  `features` (indices in `features`);
- `edges`, strongest first: `source`, `target` (indices in `nodes`) and `weight`.
Numbers are as stored (the same as the nested fields and the circuit-tracer export give).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from circuitbase.api.words import feature_words, node_words


@dataclass(frozen=True)
class EncodedView:
    """A compact view's JSON `text`, and its `size` in the result cache: its nodes and edges."""

    text: str
    size: int


def node_texts(nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Each node in words (`words.node_words`). A node has `kind` (its label: FeatureNode, ...), `layer`,
    `position`, `feature` (its Feature row or None) and `token_text`; a position's input token is the text
    of the token node there (token nodes are kept at every pruning level)."""
    nodes = list(nodes)
    inputs = {n["position"]: n["token_text"] for n in nodes if n["kind"] == "TokenNode"}
    return [
        node_words(
            kind=n["kind"],
            layer=n["layer"],
            position=n["position"],
            feature=n["feature"],
            token_text=n["token_text"],
            input_text=inputs.get(n["position"]),
        )
        for n in nodes
    ]


def compact_view(row: Mapping[str, Any], *, kinds: Mapping[str, str]) -> dict[str, Any]:
    """The JSON object of the module docstring from a `graph_view` row; `kinds` maps node labels
    (FeatureNode, ...) to the names the API gives them (FEATURE, ...)."""
    nodes = sorted(row["nodes"], key=lambda n: n["idx"])
    feature_at: dict[str, int] = {}
    features: dict[str, list[Any]] = {"key": [], "label": [], "description": []}
    supernodes: dict[str, dict[str, Any]] = {}
    worded = []
    for n in nodes:
        is_feature = n["kind"] == "FeatureNode" and n["ref"] is not None
        feature = (
            {
                "layer": n["layer"],
                "index": n["feature"],
                "label": n["label"],
                "promoted_tokens": n["promoted_tokens"],
            }
            if is_feature
            else None
        )
        if is_feature and n["ref"] not in feature_at:
            feature_at[n["ref"]] = len(features["key"])
            features["key"].append(n["ref"])
            features["label"].append(n["label"])
            features["description"].append(feature_words(feature))  # type: ignore[arg-type]
            for key, name in n["supernodes"] or []:
                group = supernodes.setdefault(key, {"key": key, "name": name, "features": []})
                group["features"].append(feature_at[n["ref"]])
        tokens = n["kind"] in ("TokenNode", "LogitNode")
        worded.append({**n, "feature": feature, "token_text": n["text"] if tokens else None})
    at = {n["idx"]: i for i, n in enumerate(nodes)}
    edges = [
        (at[s], at[t], w)
        for s, t, w in zip(row["sources"], row["targets"], row["weights"], strict=True)
        if s in at and t in at
    ]
    return {
        "tokens": row["tokens"],
        "nodes": {
            "node": [n["node"] for n in nodes],
            "kind": [kinds[n["kind"]] for n in nodes],
            "layer": [n["layer"] for n in nodes],
            "position": [n["position"] for n in nodes],
            "featureIndex": [n["feature"] for n in nodes],
            "influence": [n["influence"] for n in nodes],
            "activation": [n["activation"] for n in nodes],
            "probability": [n["probability"] for n in nodes],
            "text": node_texts(worded),
            "feature": [feature_at.get(n["ref"]) if n["kind"] == "FeatureNode" else None for n in nodes],
            "token": [n["token_text"] for n in worded],
        },
        "features": features,
        "supernodes": sorted(supernodes.values(), key=lambda s: s["key"]),
        "edges": {
            "source": [e[0] for e in edges],
            "target": [e[1] for e in edges],
            "weight": [e[2] for e in edges],
        },
    }


def encoded_view(row: Mapping[str, Any], *, kinds: Mapping[str, str]) -> EncodedView:
    """`compact_view(row, kinds=kinds)` as JSON text (non-ASCII characters as they are)."""
    view = compact_view(row, kinds=kinds)
    text = json.dumps(view, ensure_ascii=False, separators=(",", ":"))
    return EncodedView(text=text, size=len(view["nodes"]["node"]) + len(view["edges"]["weight"]))
