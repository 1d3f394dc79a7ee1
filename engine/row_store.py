"""The feature rows visited so far, within a memory cap, and the influence order they imply.

A row holds the edge weights into one visited feature from every source column. Stored densely over
all n_active feature columns, a long prompt's rows outgrow any card (2,048 tokens of Gemma-2-2B have
~8.5M active features: 34 MB a row), so the store keeps rows over a *pool* of feature columns:

1. While `budget` full rows fit in `max_bytes`, every column is kept (the pool is all of them).
2. Otherwise rows are kept full only while they fit; then the pool is narrowed to the visited features
   plus the unvisited ones with the highest estimated influence (as many as leave room for `budget`
   rows), and features outside the pool are never visited. Error and token columns are always kept,
   so every edge between the graph's nodes is still exact; only the choice of nodes is limited.
3. If even a pool of `budget` columns does not fit, fewer features are visited (`capped`).

Influence (as in `pruning`): row i, normalised by the sum of |row i| over *all* sources (taken once,
when the row arrives), passes the credit it receives on to its sources; logit rows start with the
logit probabilities. Credit among visited features is propagated on the small [V, V] block of their
own columns (the graph is acyclic, so at most n_layers + 1 steps); one pass over the stored rows
then gives every pool column's estimate. This equals pushing credit through the full rows each step.
"""

from __future__ import annotations

import math

import torch

_PUSH_ROWS = 1024  # rows normalised at a time when pushing credit through the store


def _push(weights: torch.Tensor, rows: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """(weights / sums) @ |rows|, a block of rows at a time (no full-size |rows| copy)."""
    out = torch.zeros(rows.shape[1], dtype=rows.dtype, device=rows.device)
    scaled = weights.to(rows.dtype) / sums
    for start in range(0, rows.shape[0], _PUSH_ROWS):
        out += scaled[start : start + _PUSH_ROWS] @ rows[start : start + _PUSH_ROWS].abs()
    return out


class RowStore:
    """Visited feature rows over a pool of feature columns plus the error and token columns."""

    def __init__(
        self,
        *,
        logit_rows: torch.Tensor,
        logit_probs: torch.Tensor,
        n_active: int,
        budget: int,
        max_bytes: int,
        n_layers: int,
        refresh_batches: int,
    ) -> None:
        """logit_rows: [n_logits, n_active + n_other] full rows; budget: feature rows wanted;
        refresh_batches: batches taken from one influence ranking before it is recomputed."""
        self.n_active, self.n_layers, self.refresh_batches = n_active, n_layers, refresh_batches
        self.n_other = logit_rows.shape[1] - n_active
        self.dtype, self.device = logit_rows.dtype, logit_rows.device
        element = logit_rows.element_size()
        full_row = (n_active + self.n_other) * element
        wanted = budget
        if budget * full_row <= max_bytes:
            self.pool_size, dense_rows = n_active, budget
        else:
            self.pool_size = max_bytes // (budget * element) - self.n_other
            dense_rows = max_bytes // full_row
            if self.pool_size < budget:  # largest b with b rows of b + n_other columns within the cap
                root = math.isqrt(self.n_other**2 + 4 * (max_bytes // element))
                budget = max(1, (root - self.n_other) // 2)
                self.pool_size = budget
        self.budget = budget
        self.capped = budget < wanted  # fewer features visited than asked
        self.pool_limited = self.pool_size < n_active  # features outside the pool are never visited
        self.pool: torch.Tensor | None = None  # source indices of the kept feature columns; None = all
        self.logit_rows = logit_rows
        self.logit_sums = logit_rows.abs().sum(dim=1).clamp(min=1e-12)
        self.logit_probs = logit_probs.to(self.dtype)
        self.rows = torch.zeros(
            min(dense_rows, budget), n_active + self.n_other, dtype=self.dtype, device=self.device
        )
        self.sums = torch.zeros(budget, dtype=self.dtype, device=self.device)
        self.visited = torch.zeros(0, dtype=torch.long, device=self.device)
        self.is_visited = torch.zeros(n_active, dtype=torch.bool, device=self.device)
        self.queue = torch.zeros(0, dtype=torch.long, device=self.device)
        # every feature is visited and its row fits: no order is needed, features go in index order
        self.in_index_order = budget == n_active and not self.pool_limited

    @property
    def n_visited(self) -> int:
        return int(self.visited.numel())

    @property
    def feature_columns(self) -> torch.Tensor:
        """Source index of each stored feature column."""
        if self.pool is None:
            return torch.arange(self.n_active, device=self.device)
        return self.pool

    def next_batch(self, size: int) -> torch.Tensor:
        """The next <= `size` features to visit (source indices): in index order when every feature is
        visited, else the `refresh_batches` batches' worth of highest estimated influence, re-ranked
        when they are used up and visited in index order (by layer)."""
        size = min(size, self.budget - self.n_visited)
        if self.in_index_order:
            return torch.arange(self.n_visited, self.n_visited + size, device=self.device)
        if self.pool is None and self.n_visited + size > self.rows.shape[0]:
            self._narrow()
            self.queue = self.queue[:0]
        if self.queue.numel() < size:
            scores = self.influence()
            candidates = self.feature_columns
            scores[self.is_visited[candidates]] = -1.0
            order = torch.argsort(scores, descending=True, stable=True)
            count = min(size * self.refresh_batches, self.budget - self.n_visited)
            # sources are numbered layer by layer, so sorting by index puts targets of low layers
            # together: a batch's backward pass only runs down from its highest target layer
            self.queue = torch.sort(candidates[order[:count]]).values
        batch, self.queue = self.queue[:size], self.queue[size:]
        return batch

    def add(self, features: torch.Tensor, rows: torch.Tensor) -> None:
        """Store the full rows [n, n_active + n_other] of the visited features [n] (source indices)."""
        start, end = self.n_visited, self.n_visited + features.numel()
        if not self.in_index_order:  # the sums serve the influence order only
            self.sums[start:end] = torch.linalg.vector_norm(rows, ord=1, dim=1).clamp(min=1e-12)
        self.rows[start:end] = self.kept_columns(rows)
        self.visited = torch.cat([self.visited, features])
        self.is_visited[features] = True

    def stored_rows(self) -> torch.Tensor:
        """[n_visited, n_pool + n_other] rows in visit order."""
        return self.rows[: self.n_visited]

    def column_of(self, features: torch.Tensor) -> torch.Tensor:
        """Stored column of each source feature index (all must be in the pool)."""
        if self.pool is None:
            return features
        return torch.searchsorted(self.pool, features)

    def kept_columns(self, rows: torch.Tensor) -> torch.Tensor:
        """Full rows [n, n_active + n_other] cut to the stored columns [n, n_pool + n_other]."""
        if self.pool is None:
            return rows
        return torch.cat([rows[:, self.pool], rows[:, self.n_active :]], dim=1)

    def influence(self) -> torch.Tensor:
        """Estimated influence on the logits of every stored feature column, [n_pool]."""
        start = _push(self.logit_probs, self.kept_columns(self.logit_rows), self.logit_sums)
        rows, sums = self.stored_rows(), self.sums[: self.n_visited]
        if self.n_visited:
            own = self.column_of(self.visited)
            block = rows[:, own].abs() / sums[:, None]  # [V, V]: credit passed among visited features
            current = start[own]
            total = current.clone()
            for _ in range(self.n_layers + 1):
                current = current @ block
                if float(current.abs().sum()) <= 1e-12:
                    break
                total += current
            start = start + _push(total, rows, sums)
        return start[: start.numel() - self.n_other]

    # -- narrowing the pool ---------------------------------------------------------------------

    def _narrow(self) -> None:
        """Keep the visited columns and the best-estimated others, and make room for `budget` rows."""
        scores = self.influence()
        scores[self.is_visited] = float("inf")
        keep = torch.argsort(scores, descending=True, stable=True)[: self.pool_size]
        self.pool = torch.sort(keep).values
        narrowed = torch.zeros(
            self.budget, self.pool_size + self.n_other, dtype=self.dtype, device=self.device
        )
        narrowed[: self.n_visited] = self.kept_columns(self.stored_rows())
        self.rows = narrowed
