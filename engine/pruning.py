"""Influence, pruning and graph scores on the row form of an attribution graph.

An attribution graph is held as `rows` [n_rows, n_nodes]: one row per node that has incoming edges
(features and logits); error and token nodes are sources only. `row_nodes[i]` is the node index of
row i. Keeping rows instead of a square matrix makes memory grow with the number of feature nodes
kept times the node count, never with the square of the prompt length.

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


def normalize_rows(rows: torch.Tensor) -> torch.Tensor:
    """|rows| / (row sums of |rows|), in one new tensor."""
    magnitude = rows.abs()
    return magnitude.div_(magnitude.sum(dim=1, keepdim=True).clamp(min=_EPS))


def propagate_influence(
    normalized: torch.Tensor, row_nodes: torch.Tensor, seed: torch.Tensor, *, max_steps: int
) -> torch.Tensor:
    """Credit that flows through each node when `seed` (over nodes) is pushed down the rows."""
    total = torch.zeros_like(seed)
    current = seed
    for _ in range(max_steps):
        current = current[row_nodes] @ normalized
        if float(current.abs().sum()) <= _EPS:
            return total
        total += current
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
    edge_mask: torch.Tensor  # [n_rows, n_nodes] bool, edges kept
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
    """Influence of every node, the pruning masks and the graph's two scores."""
    max_steps = n_layers + 3
    row_nodes = row_nodes.to(rows.device)
    weights = logit_weights(kinds, logit_probs.to(device=rows.device, dtype=rows.dtype))
    normalized = normalize_rows(rows)
    influence = propagate_influence(normalized, row_nodes, weights, max_steps=max_steps)

    token_influence = float(influence[kinds.tokens].sum())
    error_influence = float(influence[kinds.errors].sum())
    replacement = token_influence / max(token_influence + error_influence, _EPS)

    explained = torch.ones(kinds.n_nodes, dtype=rows.dtype, device=rows.device)
    explained[row_nodes] = 1 - normalized[:, kinds.errors].sum(dim=1)
    explained[kinds.errors] = 0
    output_influence = influence + weights
    completeness = float((explained * output_influence).sum() / output_influence.sum().clamp(min=_EPS))

    node_mask = torch.ones(kinds.n_nodes, dtype=torch.bool, device=rows.device)
    prunable = torch.zeros_like(node_mask)
    prunable[: kinds.n_features + kinds.n_errors] = True
    node_mask[prunable] = _cover(influence[prunable], node_threshold)

    kept_rows = rows * (node_mask[None, :] & node_mask[row_nodes][:, None])
    kept_normalized = normalize_rows(kept_rows)
    kept_influence = propagate_influence(kept_normalized, row_nodes, weights, max_steps=max_steps)
    edge_scores = kept_normalized.mul_((kept_influence + weights)[row_nodes][:, None]).flatten()
    # only kept edges can be kept: ranking just those gives the same mask at a fraction of the sort
    candidates = torch.nonzero(kept_rows.flatten(), as_tuple=True)[0]
    edge_mask = torch.zeros_like(edge_scores, dtype=torch.bool)
    edge_mask[candidates] = _cover(edge_scores[candidates], edge_threshold)
    edge_mask = edge_mask.view_as(kept_rows)
    return PruneResult(
        node_influence=influence,
        node_mask=node_mask,
        edge_mask=edge_mask,
        replacement_score=replacement,
        completeness_score=completeness,
    )
