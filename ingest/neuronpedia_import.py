"""Read a Neuronpedia / circuit-tracer graph JSON file (the viewer's format) into GraphRows.

1. The node kind comes from `feature_type` ("embedding", "logit", "... error", otherwise a feature);
   layer, feature index / token id and position come from the node id (`{layer}_{feature}_{pos}`,
   `E_{token}_{pos}`, `{n_layers + 1}_{token}_{pos}`), which both producers write the same way.
2. The file holds only pruned nodes and links; links name nodes by id and become ordinals.
3. The model is `metadata.scan`, the transcoder set `metadata.transcoder_list[0]` (else the scan), the
   prompt id `metadata.slug`, so a JSON file next to its `.safetensors` twin yields the same graph id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from circuitbase.ingest.model import (
    GraphRows,
    IngestError,
    NodeRow,
    build_rows,
    feature_key,
    graph_id,
    token_key,
)


def _kind(record: dict[str, Any]) -> str:
    kind = str(record.get("feature_type", ""))
    if kind == "embedding" or str(record.get("node_id", "")).startswith("E_"):
        return "TokenNode"
    if kind == "logit":
        return "LogitNode"
    if "error" in kind:
        return "ErrorNode"
    return "FeatureNode"


def _node(record: dict[str, Any], *, model: str, transcoder_set: str, where: str) -> NodeRow:
    node_id = str(record.get("node_id", ""))
    parts = node_id.split("_")
    if len(parts) != 3:
        raise IngestError(f"{where}: node id {node_id!r} is not '<layer>_<index>_<position>'")
    kind = _kind(record)
    try:
        layer = -1 if parts[0] == "E" else int(parts[0])
        index, position = int(parts[1]), int(parts[2])
    except ValueError:
        raise IngestError(f"{where}: node id {node_id!r} has non-integer parts") from None
    influence = record.get("influence")
    common = {"node": node_id, "position": position, "influence": influence}
    if kind == "FeatureNode":
        ref = feature_key(transcoder_set, layer, index)
        return NodeRow(
            kind, layer=layer, activation=record.get("activation"), feature=index, ref=ref, **common
        )
    if kind == "ErrorNode":
        return NodeRow(kind, layer=layer, **common)
    if kind == "TokenNode":
        return NodeRow(kind, layer=-1, token_id=index, ref=token_key(model, index), **common)
    probability = record.get("token_prob")
    return NodeRow(
        kind, layer=layer - 1, token_id=index, probability=probability, ref=token_key(model, index), **common
    )


def _logit_text(clerp: str) -> str | None:
    """The token of a logit's label `Output "tok" (p=0.123)`, if it has that shape."""
    first, last = clerp.find('"'), clerp.rfind('"')
    return clerp[first + 1 : last] if 0 <= first < last else None


def rows_from_neuronpedia(path: str | Path) -> GraphRows:
    """GraphRows of one graph JSON file; raises IngestError naming the file for anything malformed."""
    path = Path(path)
    where = str(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IngestError(f"{where}: not a readable graph JSON file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) or "links" not in doc:
        raise IngestError(f"{where}: not a Neuronpedia graph (needs 'metadata', 'nodes' and 'links')")
    meta = doc.get("metadata") or {}
    model = str(meta.get("scan") or "")
    sets = meta.get("transcoder_list") or []
    transcoder_set = str(sets[0]) if sets else model
    slug = str(meta.get("slug") or "")
    tokens = [str(t) for t in meta.get("prompt_tokens") or []]
    nodes = [_node(r, model=model, transcoder_set=transcoder_set, where=where) for r in doc["nodes"]]
    ordinal = {n.node: i for i, n in enumerate(nodes)}
    if len(ordinal) != len(nodes):
        raise IngestError(f"{where}: duplicate node ids")
    try:
        links = [(ordinal[link["source"]], ordinal[link["target"]], link["weight"]) for link in doc["links"]]
    except KeyError as exc:
        raise IngestError(f"{where}: a link names an unknown node or lacks a field ({exc})") from None
    except TypeError:
        raise IngestError(f"{where}: 'links' must be a list of objects") from None
    texts: dict[int, str] = {}
    for node, record in zip(nodes, doc["nodes"], strict=True):
        if node.kind == "TokenNode" and node.position < len(tokens):
            texts[int(node.token_id or 0)] = tokens[node.position]
        elif node.kind == "LogitNode":
            text = _logit_text(str(record.get("clerp", "")))
            if text is not None:
                texts[int(node.token_id or 0)] = text
    info = meta.get("info") or {}
    scores = {k: info.get(k) for k in ("replacement_score", "completeness_score")}
    head = {
        "id": graph_id(transcoder_set, slug),
        "model": model,
        "transcoder_set": transcoder_set,
        "prompt": slug,
        **{k: float(v) for k, v in scores.items() if isinstance(v, int | float)},
        "node_threshold": meta.get("node_threshold"),
        "path": str(path.resolve()),
        "format": "neuronpedia",
    }
    prompt = {"id": slug, "text": str(meta.get("prompt") or ""), "tokens": tokens}
    src, tgt, weight = (np.asarray(col) for col in zip(*links, strict=True)) if links else ([], [], [])
    try:
        weights = np.asarray(weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise IngestError(f"{where}: link weights must be numbers") from None
    return build_rows(
        graph={k: v for k, v in head.items() if v is not None},
        prompt=prompt,
        model=model,
        transcoder_set=transcoder_set,
        nodes=nodes,
        edge_src=np.asarray(src, dtype=np.int64),
        edge_tgt=np.asarray(tgt, dtype=np.int64),
        edge_weight=weights,
        token_texts=texts,
        where=where,
    )
