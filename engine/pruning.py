"""Influence, pruning and graph scores on the row form of an attribution graph.

An attribution graph is held as `rows` [n_rows, n_sources]: one row per node that has incoming edges
(features and logits) over the source nodes [features | errors | tokens] (logits are never sources).
`row_nodes[i]` is the node index of row i. Keeping rows instead of a square matrix makes memory grow
with the number of feature nodes kept times the node count, never with the square of the prompt length.
Every step below works on one |rows| copy and vectors: normalising a row or masking nodes scales rows and
columns, so no normalised or masked matrix is built; only the edge scores are taken per non-zero entry.

1. Normalise: A = |rows| / (row sums of |rows|), so each target distributes one unit of "credit".
2. Influence: start from the logit probabilities on the logit nodes and push credit down the rows
   until it reaches sources only; a node's influence is the credit that passes through it. The graph
   is acyclic (edges go to later layers or to the logits), so this ends in at most n_layers + 2 steps.
3. Node pruning: features and error nodes in order of influence, keep the fewest that cover
   `node_threshold` of the total; tokens and logits always stay.
4. Edge pruning: on the kept nodes, score an edge by (influence of its target + its logit weight) times
   its normalised weight; keep the fewest edges that cover `edge_threshold` of the total score.
5. Scores:
   - replacement score: share of the influence reaching the inputs that lands on token nodes rather
     than error nodes (1 = the graph explains the output from the prompt alone);
   - completeness score: the influence-weighted share of each node's incoming credit that does not come
     from error nodes; an error node itself counts as fully unexplained and a token as fully explained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_EPS = 1e-12


@dataclass(frozen=True)
class NodeKinds:
    """Where each kind of node sits in the node order [features | errors | tokens | logits]."""

    n_features: int
    n_errors: int
    n_tokens: int
    n_logits: int

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_tokens + self.n_logits

    @property
    def errors(self) -> slice:
        return slice(self.n_features, self.n_features + self.n_errors)

    @property
    def tokens(self) -> slice:
        start = self.n_features + self.n_errors
        return slice(start, start + self.n_tokens)

    @property
    def logits(self) -> slice:
        return slice(self.n_nodes - self.n_logits, self.n_nodes)


@dataclass(frozen=True)
class Entries:
    """The non-zero entries of `rows`, row-major: entry k is rows[row[k], col[k]] = value[k]."""

    row: torch.Tensor  # [nnz] long, non-decreasing
    col: torch.Tensor  # [nnz] long, increasing within a row
    value: torch.Tensor  # [nnz]

    @classmethod
    def of(cls, rows: torch.Tensor) -> Entries:
        flat = torch.nonzero(rows.reshape(-1)).squeeze(1)  # one pass, cheaper than a 2-D nonzero
        width = rows.shape[1]
        return cls(flat.div(width, rounding_mode="floor"), flat.remainder(width), rows.reshape(-1)[flat])


def propagate_influence(
    magnitude: torch.Tensor,
    row_scale: torch.Tensor,
    row_nodes: torch.Tensor,
    seed: torch.Tensor,
    *,
    max_steps: int,
    column_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Credit that flows through each node when `seed` (over nodes) is pushed down the rows
    `magnitude * row_scale[:, None]`, with the source columns outside `column_mask` (default: none) cut."""
    total = torch.zeros_like(seed)
    current = seed
    n_sources = magnitude.shape[1]
    for _ in range(max_steps):
        pushed = (current[row_nodes] * row_scale) @ magnitude
        if column_mask is not None:
            pushed = pushed * column_mask
        if float(pushed.abs().sum()) <= _EPS:
            return total
        total[:n_sources] += pushed
        current = torch.zeros_like(seed)
        current[:n_sources] = pushed
    raise RuntimeError("influence did not vanish: the attribution graph has a cycle")


def logit_weights(kinds: NodeKinds, logit_probs: torch.Tensor) -> torch.Tensor:
    weights = torch.zeros(kinds.n_nodes, dtype=logit_probs.dtype, device=logit_probs.device)
    weights[kinds.logits] = logit_probs
    return weights


def _cover(scores: torch.Tensor, share: float) -> torch.Tensor:
    """Mask of the fewest entries (highest first) whose scores sum to at least `share` of the total."""
    total = scores.sum()
    if float(total) <= _EPS:
        return torch.zeros_like(scores, dtype=torch.bool)
    order = torch.argsort(scores, descending=True, stable=True)
    before = torch.cumsum(scores[order], 0) - scores[order]
    keep_sorted = before < share * total
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[order] = keep_sorted
    return mask


@dataclass
class PruneResult:
    node_influence: torch.Tensor  # [n_nodes]
    node_mask: torch.Tensor  # [n_nodes] bool
    entries: Entries  # the non-zero edges, row-major
    edge_mask: torch.Tensor  # [nnz] bool, aligned with `entries`: edges kept
    replacement_score: float
    completeness_score: float


def prune(
    rows: torch.Tensor,
    row_nodes: torch.Tensor,
    kinds: NodeKinds,
    logit_probs: torch.Tensor,
    *,
    n_layers: int,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> PruneResult:
    """Influence of every node, the pruning masks and the graph's two scores; `rows` [n_rows, n_sources]."""
    max_steps = n_layers + 3
    n_sources = rows.shape[1]
    row_nodes = row_nodes.to(rows.device)
    weights = logit_weights(kinds, logit_probs.to(device=rows.device, dtype=rows.dtype))
    magnitude = rows.abs()
    sums = magnitude.sum(dim=1).clamp(min=_EPS)
    influence = propagate_influence(magnitude, 1 / sums, row_nodes, weights, max_steps=max_steps)

    token_influence = float(influence[kinds.tokens].sum())
    error_influence = float(influence[kinds.errors].sum())
    replacement = token_influence / max(token_influence + error_influence, _EPS)

    explained = torch.ones(kinds.n_nodes, dtype=rows.dtype, device=rows.device)
    explained[row_nodes] = 1 - magnitude[:, kinds.errors].sum(dim=1) / sums
    explained[kinds.errors] = 0
    output_influence = influence + weights
    completeness = float((explained * output_influence).sum() / output_influence.sum().clamp(min=_EPS))

    node_mask = torch.ones(kinds.n_nodes, dtype=torch.bool, device=rows.device)
    prunable = torch.zeros_like(node_mask)
    prunable[: kinds.n_features + kinds.n_errors] = True
    node_mask[prunable] = _cover(influence[prunable], node_threshold)

    # the rows between kept nodes, normalised: kept rows scaled by 1 / their kept sums, other columns cut
    kept_columns = node_mask[:n_sources].to(rows.dtype)
    kept_scale = node_mask[row_nodes].to(rows.dtype) / (magnitude @ kept_columns).clamp(min=_EPS)
    kept_influence = propagate_influence(
        magnitude, kept_scale, row_nodes, weights, max_steps=max_steps, column_mask=kept_columns
    )
    entries = Entries.of(rows)
    target_credit = (kept_scale * (kept_influence + weights)[row_nodes])[entries.row]
    edge_scores = entries.value.abs() * kept_columns[entries.col] * target_credit
    # only edges between kept nodes can be kept: ranking just those gives the same mask, sorting fewer
    candidates = torch.nonzero(edge_scores).squeeze(1)
    edge_mask = torch.zeros_like(edge_scores, dtype=torch.bool)
    edge_mask[candidates] = _cover(edge_scores[candidates], edge_threshold)
    return PruneResult(
        node_influence=influence,
        node_mask=node_mask,
        entries=entries,
        edge_mask=edge_mask,
        replacement_score=replacement,
        completeness_score=completeness,
    )
