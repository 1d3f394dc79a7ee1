"""Synthetic attribution graphs with planted circuits, as ingest rows: known answers for tests and benches.

Each graph belongs to one planted circuit (round robin) and is built like a pruned graph of a model with
`n_layers` layers over `n_positions` tokens:
1. Token nodes at every position (random ids, never a planted token) except the last, which is the
   circuit's input token; one error node per layer at the last position; logit nodes for the circuit's
   answer token and `n_logits - 1` random ones.
2. The planted path at the last position: token -> feature 1 -> ... -> feature m -> answer logit, with
   weights in [0.4, 0.8) and feature influence in [0.3, 0.5).
3. A "broken" graph (share `broken_fraction`) keeps the path's first edge only: its later features are not
   active, and the graph is marked incorrect (its top token is another one). Other graphs are correct.
4. Noise: `noise_features` features drawn from a pool of `feature_pool` per layer at random positions (index
   = pool * u ** `feature_skew`, u uniform: skew 1 is uniform, larger skews make low indices common), and
   `noise_edges` random node pairs, each kept as an edge when it goes from a lower to a higher layer
   (token nodes count as layer -1, logits as n_layers), with weights in ±[0.01, 0.3); noise features'
   influence lies in [0, 0.1).
Rows are made by `circuitbase.ingest.model.build_rows`, so they load with `ingest.writer.write_graph`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from circuitbase.ingest.model import GraphRows, NodeRow, build_rows, feature_key, graph_id, token_key

MODEL, TRANSCODERS = "synthetic", "synthetic-set"


@dataclass(frozen=True)
class PlantedCircuit:
    """A path token -> features (layer, index) in increasing layers -> answer token, used by prompts `tag`."""

    tag: str
    token: int
    features: tuple[tuple[int, int], ...]
    answer: int

    def edges(self) -> list[tuple[str, str]]:
        """The planted feature-level edges as (source key, target key)."""
        keys = [
            token_key(MODEL, self.token),
            *(feature_key(TRANSCODERS, layer, index) for layer, index in self.features),
            token_key(MODEL, self.answer),
        ]
        return list(itertools.pairwise(keys))


DEFAULT_CIRCUITS = (
    PlantedCircuit("capitals", token=1, features=((0, 7), (2, 11)), answer=2),
    PlantedCircuit("arithmetic", token=3, features=((1, 5), (2, 19), (3, 23)), answer=4),
)


@dataclass(frozen=True)
class SyntheticConfig:
    """n_graphs (default 40) over `circuits`; sizes per graph (module docstring); broken_fraction of graphs
    lose the path after its first edge and are marked incorrect (default 0.25); seed (default 0)."""

    n_graphs: int = 40
    circuits: tuple[PlantedCircuit, ...] = DEFAULT_CIRCUITS
    n_layers: int = 4
    n_positions: int = 6
    n_logits: int = 3
    vocab: int = 64
    feature_pool: int = 200
    feature_skew: float = 1.0
    noise_features: int = 12
    noise_edges: int = 40
    broken_fraction: float = 0.25
    seed: int = 0
    reserved_tokens: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        used = {t for c in self.circuits for t in (c.token, c.answer)}
        object.__setattr__(self, "reserved_tokens", frozenset(used))


def _free_tokens(rng: np.random.Generator, config: SyntheticConfig, n: int, *, distinct: bool) -> list[int]:
    free = np.array([t for t in range(config.vocab) if t not in config.reserved_tokens])
    return rng.choice(free, size=n, replace=not distinct).tolist()


def synthetic_graph(i: int, *, config: SyntheticConfig) -> GraphRows:
    """The rows of graph number `i` (deterministic in `config.seed` and `i`)."""
    rng = np.random.default_rng([config.seed, i])
    circuit = config.circuits[i % len(config.circuits)]
    broken = bool(rng.random() < config.broken_fraction)
    n_pos, n_layers, last = config.n_positions, config.n_layers, config.n_positions - 1
    nodes: list[NodeRow] = []
    layer_of: list[int] = []

    def add(row: NodeRow, layer: int) -> int:
        nodes.append(row)
        layer_of.append(layer)
        return len(nodes) - 1

    tokens = [*_free_tokens(rng, config, n_pos - 1, distinct=False), circuit.token]
    token_nodes = [
        add(NodeRow("TokenNode", f"E_{t}_{p}", -1, p, 0.05, token_id=t, ref=token_key(MODEL, t)), -1)
        for p, t in enumerate(tokens)
    ]
    planted = circuit.features[:1] if broken else circuit.features
    path = [token_nodes[last]]
    for layer, index in planted:
        ref = feature_key(TRANSCODERS, layer, index)
        row = NodeRow(
            "FeatureNode",
            f"{layer}_{index}_{last}",
            layer,
            last,
            float(rng.uniform(0.3, 0.5)),
            float(rng.uniform(1, 3)),
            index,
            ref=ref,
        )
        path.append(add(row, layer))
    seen = {(layer, index, last) for layer, index in planted}
    for _ in range(config.noise_features):
        layer, index, pos = (
            int(rng.integers(n_layers)),
            int(config.feature_pool * rng.random() ** config.feature_skew),
            int(rng.integers(n_pos)),
        )
        index += 1000  # the noise pool never meets a planted feature index
        if (layer, index, pos) in seen:
            continue
        seen.add((layer, index, pos))
        ref = feature_key(TRANSCODERS, layer, index)
        row = NodeRow(
            "FeatureNode",
            f"{layer}_{index}_{pos}",
            layer,
            pos,
            float(rng.uniform(0, 0.1)),
            float(rng.uniform(0.1, 2)),
            index,
            ref=ref,
        )
        add(row, layer)
    for layer in range(n_layers):
        add(NodeRow("ErrorNode", f"{layer}_-1_{last}", layer, last, float(rng.uniform(0, 0.05))), layer)
    wrong = _free_tokens(rng, config, config.n_logits - 1, distinct=True)
    logits = [circuit.answer, *wrong]
    logit_nodes = []
    for rank, tok in enumerate(logits):
        row = NodeRow(
            "LogitNode",
            f"{n_layers + 1}_{tok}_{last}",
            n_layers,
            last,
            1.0 / (rank + 1),
            token_id=tok,
            probability=0.5 / (rank + 1),
            ref=token_key(MODEL, tok),
        )
        logit_nodes.append(add(row, n_layers))
    edges: dict[tuple[int, int], float] = {}
    if not broken:
        path.append(logit_nodes[0])
    for a, b in itertools.pairwise(path):
        edges[a, b] = float(rng.uniform(0.4, 0.8))
    for _ in range(config.noise_edges):  # scalar draws and plain lists: numpy's per-call overhead dominates
        a, b = int(rng.integers(len(nodes))), int(rng.integers(len(nodes)))
        if layer_of[a] < layer_of[b] and (a, b) not in edges and nodes[a].kind != "LogitNode":
            sign = (-1.0, 1.0)[int(rng.integers(2))]
            edges[a, b] = sign * float(rng.uniform(0.01, 0.3))
    pairs = list(edges)
    prompt = f"synthetic-{config.seed}-{i}"
    top = wrong[0] if broken else circuit.answer
    return build_rows(
        graph={
            "id": graph_id(TRANSCODERS, prompt),
            "model": MODEL,
            "transcoder_set": TRANSCODERS,
            "prompt": prompt,
            "correct": not broken,
            "top_token": str(top),
            "replacement_score": 0.9,
            "completeness_score": 0.95,
        },
        prompt={
            "id": prompt,
            "text": " ".join(map(str, tokens)),
            "tokens": [str(t) for t in tokens],
            "answer": str(circuit.answer),
            "tags": [circuit.tag],
            "dataset": "synthetic",
        },
        model=MODEL,
        transcoder_set=TRANSCODERS,
        nodes=nodes,
        edge_src=np.array([a for a, _ in pairs], dtype=np.int64),
        edge_tgt=np.array([b for _, b in pairs], dtype=np.int64),
        edge_weight=np.array([edges[p] for p in pairs]),
        token_texts={t: f"tok{t}" for t in range(config.vocab)},
        where=f"synthetic graph {i}",
    )
