"""A graph view as circuit-tracer / Neuronpedia graph JSON, in the format `circuitbase.engine.neuronpedia`
writes for whole graphs (its record builders and `document`), from the rows the repository returns.

1. The view's nodes (repository rows: `kind`, `node`, `layer`, `position`, `influence`, `activation`,
   `feature`, `token_id`, `probability`) become node records; a feature's `clerp` is its label, an input
   token's its prompt token (else its Token text), a logit's its Token text; the first logit (the top
   one, as nodes come in graph order) is the target. The logit's stored layer is the model's layer count.
2. `keep` (default: every node of the view) restricts the nodes, e.g. to the ones a dashboard shows after
   its own filtering; links are the view's edges between kept nodes, in the view's order.
3. qParams: the pinned and clicked node ids (each must be kept), and supernodes as
   [name, node id, ...]: each given group's kept node ids, groups with none left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from circuitbase.engine.neuronpedia import (
    document,
    error_record,
    feature_record,
    logit_record,
    token_record,
)


class ViewExportError(ValueError):
    """A node id that the view does not hold was asked for."""


def node_record(
    row: Mapping[str, Any], *, label: str | None, token_text: str | None, target: bool
) -> dict[str, Any]:
    """The Neuronpedia node dict of one view row (module docstring, step 1)."""
    kind, layer, position = row["kind"], int(row["layer"]), int(row["position"])
    if kind == "FeatureNode":
        return feature_record(
            layer=layer,
            feature=int(row["feature"]),
            position=position,
            influence=row.get("influence"),
            activation=row.get("activation"),
            clerp=label or "",
        )
    if kind == "ErrorNode":
        return error_record(layer=layer, position=position, influence=row.get("influence"))
    token_id = int(row["token_id"])
    text = token_text if token_text is not None else str(token_id)
    if kind == "TokenNode":
        return token_record(token_id=token_id, position=position, influence=row.get("influence"), text=text)
    return logit_record(
        token_id=token_id,
        position=position,
        n_layers=layer,
        probability=float(row.get("probability") or 0.0),
        text=text,
        target=target,
    )


def manual_supernodes(
    feature_of: Mapping[str, str], memberships: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[tuple[str, list[str]]]:
    """(name, node ids) of each manual supernode (algorithm 'manual': defined by a person) with members
    among the nodes of `feature_of` (node id -> Feature key), by supernode key; `memberships` maps a Feature
    key to its Supernode rows."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for node, feature in feature_of.items():
        for s in memberships.get(feature) or []:
            if s.get("algorithm") == "manual":
                groups.setdefault(s["key"], (str(s.get("name") or s["key"]), []))[1].append(node)
    return [groups[k] for k in sorted(groups)]


def _unknown(ids: Sequence[str], known: set[str]) -> list[str]:
    return [i for i in dict.fromkeys(ids) if i not in known]


def view_document(
    *,
    graph: Mapping[str, Any],
    prompt: Mapping[str, Any] | None,
    rows: Sequence[Mapping[str, Any]],
    edges: Sequence[Mapping[str, Any]],
    labels: Mapping[str, str | None],
    token_texts: Mapping[str, str | None],
    keep: Sequence[str] | None = None,
    pinned_ids: Sequence[str] = (),
    clicked_id: str = "",
    supernodes: Sequence[tuple[str, Sequence[str]]] = (),
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The document of a view (module docstring). `graph` and `prompt` are their repository rows; `labels`
    and `token_texts` map a row's node id to its feature label and token text; `keep` (default None: all),
    `pinned_ids` (default none), `clicked_id` (default none) and `supernodes` (default none: (name, node
    ids) groups) are node ids of the view; `info` (default none) goes to metadata.info. Raises
    ViewExportError naming node ids the view does not hold."""
    ids = [r["node"] for r in rows]
    missing = _unknown(list(keep or []), set(ids))
    if missing:
        raise ViewExportError(f"nodes not in this view: {missing[:10]}")
    kept = set(ids if keep is None else keep)
    missing = _unknown([*pinned_ids, *([clicked_id] if clicked_id else [])], kept)
    if missing:
        raise ViewExportError(f"pinned or clicked nodes not among the exported ones: {missing[:10]}")
    tokens = list((prompt or {}).get("tokens") or [])
    target = next((r["node"] for r in rows if r["kind"] == "LogitNode"), None)
    nodes = []
    for r in rows:
        if r["node"] not in kept:
            continue
        text = token_texts.get(r["node"])
        if r["kind"] == "TokenNode" and int(r["position"]) < len(tokens):
            text = tokens[int(r["position"])]
        nodes.append(node_record(r, label=labels.get(r["node"]), token_text=text, target=r["node"] == target))
    links = [
        {"source": e["source"], "target": e["target"], "weight": e["weight"]}
        for e in edges
        if e["source"] in kept and e["target"] in kept
    ]
    groups = [[name, *members] for name, group in supernodes if (members := [m for m in group if m in kept])]
    return document(
        slug=str(graph.get("prompt") or graph["id"]),
        scan=str(graph.get("model") or ""),
        transcoder_set=str(graph.get("transcoder_set") or ""),
        prompt=str((prompt or {}).get("text") or graph.get("prompt_text") or ""),
        prompt_tokens=tokens,
        node_threshold=graph.get("node_threshold"),
        replacement_score=graph.get("replacement_score"),
        completeness_score=graph.get("completeness_score"),
        nodes=nodes,
        links=links,
        pinned_ids=list(dict.fromkeys(pinned_ids)),
        supernodes=groups,
        clicked_id=clicked_id,
        info=info,
    )
