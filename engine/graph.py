"""One attribution graph in memory (its file format: `graph_file`).

Node order follows circuit-tracer, so exports line up with the tools researchers know:

    [selected features | error nodes (layer-major: layer * n_pos + pos) | token nodes (pos) | logit nodes]

`adjacency[target, source]` is the direct effect of `source` on `target`. It is stored sparse (only
non-zero entries), so a graph grows with the edges it has, not with the square of its node count.
A graph read from a file saved without `keep_full` holds only its pruned edges (`remainder`
"dropped"); asking it for the unpruned ones raises a ValueError that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


class GraphFileError(ValueError):
    """A graph file is missing, truncated or not a circuitbase graph."""


@dataclass
class AttributionGraph:
    """Nodes, edges and scores of one prompt's attribution graph."""

    prompt: str
    input_ids: list[int]
    input_tokens: list[str]
    model_name: str
    transcoder_name: str
    n_layers: int
    active_features: torch.Tensor  # [n_active, 3] long: (layer, position, feature index)
    activations: torch.Tensor  # [n_active] float
    selected_features: torch.Tensor  # [n_selected] long, indices into active_features (graph nodes)
    logit_tokens: torch.Tensor  # [n_logits] long, vocabulary ids
    logit_probs: torch.Tensor  # [n_logits] float, model probabilities
    adjacency: torch.Tensor  # [n_nodes, n_nodes] float, coalesced sparse COO; rows = targets; see remainder
    node_influence: torch.Tensor  # [n_nodes] float, indirect influence on the logits
    node_mask: torch.Tensor  # [n_nodes] bool, nodes kept by pruning
    edge_mask: torch.Tensor  # [nnz] bool, aligned with adjacency.coalesce().values(): edges kept by pruning
    replacement_score: float
    completeness_score: float
    logit_token_strs: list[str] = field(default_factory=list)
    prompt_meta: dict[str, Any] = field(default_factory=dict)  # expected answer, tags, dataset, id
    params: dict[str, Any] = field(default_factory=dict)  # thresholds and settings used
    # the edges outside the pruned graph: "exact" (as computed), "float16" (read from a file saved with
    # keep_full, see graph_file) or "dropped" (not held: adjacency and edge_mask cover the pruned graph)
    remainder: str = "exact"
    n_dropped: int = 0  # edges outside the pruned graph that are not held (remainder "dropped")

    # ---- node layout -------------------------------------------------------------------------
    @property
    def n_positions(self) -> int:
        return len(self.input_ids)

    @property
    def n_features(self) -> int:
        return int(self.selected_features.numel())

    @property
    def n_errors(self) -> int:
        return self.n_layers * self.n_positions

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.numel())

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_positions + self.n_logits

    @property
    def error_offset(self) -> int:
        return self.n_features

    @property
    def token_offset(self) -> int:
        return self.n_features + self.n_errors

    @property
    def logit_offset(self) -> int:
        return self.token_offset + self.n_positions

    def error_node(self, layer: int, position: int) -> int:
        return self.error_offset + layer * self.n_positions + position

    def token_node(self, position: int) -> int:
        return self.token_offset + position

    def logit_node(self, rank: int) -> int:
        return self.logit_offset + rank

    @property
    def n_edges_full(self) -> int:
        """Non-zero edges of the unpruned graph, held or not."""
        return int(self.edge_mask.numel()) + self.n_dropped

    def unpruned_adjacency(self) -> torch.Tensor:
        """`adjacency` with every edge; a ValueError if only the pruned graph is held."""
        if self.remainder == "dropped":
            raise ValueError(
                f"graph of {self.prompt[:40]!r} holds only its pruned edges ({self.n_dropped} others were "
                "not saved): attribute with --keep-full (save(keep_full=True)) to keep them"
            )
        return self.adjacency

    def dense_adjacency(self) -> torch.Tensor:
        """Every edge as a dense [n_nodes, n_nodes] matrix (see `unpruned_adjacency`)."""
        return self.unpruned_adjacency().to_dense()

    def edges(self, *, pruned: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices [2, n] as (target, source), weights [n]): the kept edges, or all with `pruned=False`
        (a ValueError if only the pruned graph is held)."""
        adj = (self.adjacency if pruned else self.unpruned_adjacency()).coalesce()
        idx, val = adj.indices(), adj.values()
        if not pruned:
            return idx, val
        return idx[:, self.edge_mask], val[self.edge_mask]

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path, *, keep_full: bool = False) -> Path:
        """Write atomically to `path` (a `.safetensors` file): the pruned graph exactly and, with
        `keep_full` (default False), the unpruned remainder compactly (`graph_file`)."""
        from circuitbase.engine.graph_file import write_graph

        return write_graph(self, path, keep_full=keep_full)

    @classmethod
    def load(cls, path: str | Path, *, unpruned: bool = True) -> AttributionGraph:
        """The graph in `path` (any readable format); `unpruned=False` skips the remainder (default True)."""
        from circuitbase.engine.graph_file import read_graph

        return read_graph(path, unpruned=unpruned)
