"""Map one attribution graph onto the rows the writer stores (see cypher/README.md for the data model).

1. Keep only pruned-in nodes and edges; number the kept nodes 0..k-1 (`idx`), which edges refer to.
2. Give every kept node its global identity where it has one: a feature node is an instance of
   `Feature {key: "set/layer/index"}`, token and logit nodes of `Token {key: "model/id"}`; error nodes
   have none (they are per-position residuals that mean nothing across prompts).
3. Aggregate the graph's edges to the feature level: for each pair of global endpoints, sum the
   weights, the absolute weights and take the largest absolute weight of the instance edges between
   them. These per-graph contributions are what the writer adds to the `ATTRIBUTES` edges.
4. Refuse non-finite numbers (the whole graph, before anything is written).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.prompts import prompt_id

NODE_KINDS = ("FeatureNode", "ErrorNode", "TokenNode", "LogitNode")
REF_LABELS = ("Feature", "Token")  # global node labels the aggregated graph connects


class IngestError(ValueError):
    """A graph cannot be loaded (bad numbers, wrong model or transcoder set, unreadable file)."""


@dataclass
class NodeRow:
    """A kept graph node; `ref` is the key of its global node (Feature or Token), "" for error nodes."""

    kind: str  # one of NODE_KINDS
    node: str  # Neuronpedia node id, unique within the graph
    layer: int  # features/errors: their layer; tokens: -1; logits: n_layers
    position: int
    influence: float | None = None
    activation: float | None = None  # features only
    feature: int | None = None  # feature index (features only)
    token_id: int | None = None  # tokens and logits
    probability: float | None = None  # logits only
    ref: str = ""


@dataclass
class GraphRows:
    """Everything the writer needs for one graph, as plain Python values (parameters of UNWIND queries)."""

    graph: dict[str, Any]  # Graph node properties, `id` first
    prompt: dict[str, Any]  # Prompt node properties
    model: str
    transcoder_set: str
    features: list[dict[str, Any]]  # {key, layer, index} of the Feature nodes used
    tokens: list[dict[str, Any]]  # {key, id, text} of the Token nodes used
    nodes: dict[str, list[dict[str, Any]]]  # kind -> [{ref: global key, props: GraphNode properties}]
    edge_src: list[int]  # kept edges as node ordinals (`idx`)
    edge_tgt: list[int]
    edge_weight: list[float]
    aggregate: dict[tuple[str, str], dict[str, list]] = field(default_factory=dict)  # (src, tgt label)

    @property
    def id(self) -> str:
        return str(self.graph["id"])

    @property
    def n_nodes(self) -> int:
        return sum(len(rows) for rows in self.nodes.values())

    @property
    def n_edges(self) -> int:
        return len(self.edge_src)


def graph_id(transcoder_set: str, prompt: str) -> str:
    """The stable id of a prompt's graph under one transcoder set (what re-runs find and skip)."""
    return f"{transcoder_set}:{prompt}"


def feature_key(transcoder_set: str, layer: int, index: int) -> str:
    return f"{transcoder_set}/{layer}/{index}"


def token_key(model: str, token: int) -> str:
    return f"{model}/{token}"


def _finite(values: np.ndarray, what: str, where: str) -> None:
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise IngestError(f"{where}: {bad} non-finite {what}; the graph is not loaded")


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def build_rows(
    *,
    graph: dict[str, Any],
    prompt: dict[str, Any],
    model: str,
    transcoder_set: str,
    nodes: Sequence[NodeRow],
    edge_src: np.ndarray,
    edge_tgt: np.ndarray,
    edge_weight: np.ndarray,
    token_texts: dict[int, str],
    where: str,
) -> GraphRows:
    """Assemble GraphRows from kept nodes and edges given as node ordinals (any source format)."""
    for name, value in (
        ("model", model),
        ("transcoder set", transcoder_set),
        ("prompt id", prompt.get("id")),
    ):
        if not value:
            raise IngestError(f"{where}: the graph names no {name}")
    edge_weight = np.asarray(edge_weight, dtype=np.float64)
    _finite(edge_weight, "edge weights", where)
    numbers = [v for n in nodes for v in (n.influence, n.activation, n.probability) if v is not None]
    _finite(np.asarray(numbers, dtype=np.float64), "node values", where)

    refs: dict[str, int] = {}
    node_ref = np.full(len(nodes), -1, dtype=np.int64)
    features: list[dict[str, Any]] = []
    tokens: list[dict[str, Any]] = []
    by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in NODE_KINDS}
    for idx, node in enumerate(nodes):
        if node.ref:
            if node.ref not in refs:
                refs[node.ref] = len(refs)
                if node.kind == "FeatureNode":
                    features.append({"key": node.ref, "layer": node.layer, "index": node.feature})
                else:
                    text = token_texts.get(int(node.token_id or 0), str(node.token_id))
                    tokens.append({"key": node.ref, "id": node.token_id, "text": text})
            node_ref[idx] = refs[node.ref]
        props = {k: v for k, v in vars(node).items() if v is not None and k not in ("kind", "ref")}
        by_kind[node.kind].append({"ref": node.ref, "props": {**props, "idx": idx}})

    edge_src, edge_tgt = np.asarray(edge_src, dtype=np.int64), np.asarray(edge_tgt, dtype=np.int64)
    rows = GraphRows(
        graph={**graph, "n_nodes": len(nodes), "n_edges": int(edge_src.size)},
        prompt=prompt,
        model=model,
        transcoder_set=transcoder_set,
        features=features,
        tokens=tokens,
        nodes=by_kind,
        edge_src=edge_src.tolist(),
        edge_tgt=edge_tgt.tolist(),
        edge_weight=edge_weight.tolist(),
    )
    rows.aggregate = _aggregate(nodes, node_ref, list(refs), edge_src, edge_tgt, edge_weight)
    return rows


def _aggregate(
    nodes: Sequence[NodeRow],
    node_ref: np.ndarray,
    ref_keys: list[str],
    src: np.ndarray,
    tgt: np.ndarray,
    weight: np.ndarray,
) -> dict[tuple[str, str], dict[str, list]]:
    """Per pair of global endpoints: summed weight, summed |weight|, max |weight| and instance count."""
    out: dict[tuple[str, str], dict[str, list]] = {}
    if src.size == 0:
        return out
    ref_label = np.array(["Feature" if n.kind == "FeatureNode" else "Token" for n in nodes] or [""])
    keep = (node_ref[src] >= 0) & (node_ref[tgt] >= 0)
    s_ref, t_ref, w = node_ref[src[keep]], node_ref[tgt[keep]], weight[keep]
    s_lab, t_lab = ref_label[src[keep]], ref_label[tgt[keep]]
    pairs, inverse = np.unique(np.stack([s_ref, t_ref]), axis=1, return_inverse=True)
    inverse = inverse.reshape(-1)
    n = pairs.shape[1]
    total = np.bincount(inverse, weights=w, minlength=n)
    total_abs = np.bincount(inverse, weights=np.abs(w), minlength=n)
    count = np.bincount(inverse, minlength=n)
    max_abs = np.zeros(n)
    np.maximum.at(max_abs, inverse, np.abs(w))
    first = np.zeros(n, dtype=np.int64)
    first[inverse[::-1]] = np.arange(inverse.size)[::-1]  # any instance edge of the pair gives its labels
    for i in range(n):
        label = (str(s_lab[first[i]]), str(t_lab[first[i]]))
        bucket = out.setdefault(label, {"s": [], "t": [], "sum": [], "abs": [], "max": [], "n": []})
        bucket["s"].append(ref_keys[pairs[0, i]])
        bucket["t"].append(ref_keys[pairs[1, i]])
        bucket["sum"].append(float(total[i]))
        bucket["abs"].append(float(total_abs[i]))
        bucket["max"].append(float(max_abs[i]))
        bucket["n"].append(int(count[i]))
    return out


def _node_rows(graph: AttributionGraph) -> tuple[list[NodeRow], np.ndarray]:
    """Kept nodes in node order, and the map full node index -> kept ordinal (-1 if pruned)."""
    influence = graph.node_influence.double().tolist()
    selected = graph.active_features[graph.selected_features].tolist()
    acts = graph.activations[graph.selected_features].double().tolist()
    n_pos, set_name = graph.n_positions, graph.transcoder_name
    rows: list[NodeRow] = []
    for i, ((layer, pos, feat), act) in enumerate(zip(selected, acts, strict=True)):
        key = feature_key(set_name, layer, feat)
        rows.append(
            NodeRow("FeatureNode", f"{layer}_{feat}_{pos}", layer, pos, influence[i], act, feat, ref=key)
        )
    for layer in range(graph.n_layers):
        for pos in range(n_pos):
            index = graph.error_node(layer, pos)
            rows.append(NodeRow("ErrorNode", f"{layer}_-1_{pos}", layer, pos, influence[index]))
    for pos, tok in enumerate(graph.input_ids):
        ref = token_key(graph.model_name, tok)
        inf = influence[graph.token_node(pos)]
        rows.append(NodeRow("TokenNode", f"E_{tok}_{pos}", -1, pos, inf, token_id=tok, ref=ref))
    probs = graph.logit_probs.double().tolist()
    for rank, tok in enumerate(graph.logit_tokens.tolist()):
        node = f"{graph.n_layers + 1}_{tok}_{n_pos - 1}"
        ref = token_key(graph.model_name, tok)
        inf = influence[graph.logit_node(rank)]
        rows.append(
            NodeRow(
                "LogitNode",
                node,
                graph.n_layers,
                n_pos - 1,
                inf,
                token_id=tok,
                probability=probs[rank],
                ref=ref,
            )
        )
    keep = graph.node_mask.numpy()
    ordinal = np.full(keep.size, -1, dtype=np.int64)
    ordinal[keep] = np.arange(int(keep.sum()))
    return [row for row, kept in zip(rows, keep.tolist(), strict=True) if kept], ordinal


def faithfulness_properties(scores: dict[str, Any]) -> dict[str, float | None]:
    """The Graph properties of a faithfulness check's scores (`engine.faithfulness` summary; None where
    a score was not measured): what ingest and the analysis step write."""
    return {
        "faithfulness": _optional_float(scores.get("logit_agreement")),
        "faithfulness_correlation": _optional_float(scores.get("logit_correlation")),
        "logit_share_measured": _optional_float(scores.get("logit_share_measured")),
        "logit_share_predicted": _optional_float(scores.get("logit_share_predicted")),
    }


def rows_from_graph(graph: AttributionGraph, *, path: str | Path | None = None) -> GraphRows:
    """GraphRows of an in-memory graph (`path`: its file, recorded on the Graph node; default none)."""
    where = str(path) if path is not None else f"graph of {graph.prompt[:40]!r}"
    if graph.n_nodes != graph.node_mask.numel() or graph.node_influence.numel() != graph.n_nodes:
        raise IngestError(f"{where}: node mask/influence do not match the node count {graph.n_nodes}")
    nodes, ordinal = _node_rows(graph)
    (targets, sources), weights = graph.edges(pruned=True)
    src, tgt = ordinal[sources.numpy()], ordinal[targets.numpy()]
    if (src < 0).any() or (tgt < 0).any():
        raise IngestError(f"{where}: kept edges touch pruned nodes")
    meta = graph.prompt_meta
    pid = str(meta.get("id") or prompt_id(graph.prompt, meta.get("answer")))
    texts = dict(zip(graph.input_ids, graph.input_tokens, strict=False))
    texts.update(zip(graph.logit_tokens.tolist(), graph.logit_token_strs, strict=False))
    checked = graph.params.get("faithfulness") or {}  # engine.faithfulness scores, when the graph was checked
    head = {
        "id": graph_id(graph.transcoder_name, pid),
        "model": graph.model_name,
        "transcoder_set": graph.transcoder_name,
        "prompt": pid,
        "replacement_score": _optional_float(graph.replacement_score),
        "completeness_score": _optional_float(graph.completeness_score),
        "top_token": meta.get("top_token"),
        "correct": meta.get("correct"),
        "node_threshold": _optional_float(graph.params.get("node_threshold")),
        "edge_threshold": _optional_float(graph.params.get("edge_threshold")),
        **faithfulness_properties(checked),
        "n_nodes_full": graph.n_nodes,
        "n_edges_full": graph.n_edges_full,
        "path": str(Path(path).resolve()) if path is not None else None,
        "format": "circuitbase",
    }
    for name in ("replacement_score", "completeness_score"):
        if head[name] is not None and not math.isfinite(head[name]):
            raise IngestError(f"{where}: {name} is not finite")
    prompt = {
        "id": pid,
        "text": graph.prompt,
        "tokens": list(graph.input_tokens),
        "answer": meta.get("answer"),
        "tags": list(meta.get("tags") or []),
        "dataset": meta.get("dataset") or "",
    }
    return build_rows(
        graph={k: v for k, v in head.items() if v is not None},
        prompt={k: v for k, v in prompt.items() if v is not None},
        model=graph.model_name,
        transcoder_set=graph.transcoder_name,
        nodes=nodes,
        edge_src=src,
        edge_tgt=tgt,
        edge_weight=weights.double().numpy(),
        token_texts=texts,
        where=where,
    )
