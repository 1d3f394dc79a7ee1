"""Tests for a difference in presence between two sides: Mantel-Haenszel over strata, Benjamini-Hochberg q.

A stratum is `(k_a, n_a, k_b, n_b)`: an item (a feature, a subcircuit) is present in k_a of the n_a graphs
of side A and k_b of the n_b graphs of side B in that stratum (a task). With m = k_a + k_b and N = n_a + n_b
per stratum, over the strata that hold both sides:
- `diff`: the Mantel-Haenszel common risk difference, Σ (k_a n_b - k_b n_a) / N / Σ n_a n_b / N;
- `z`: the Cochran-Mantel-Haenszel statistic (no continuity correction), signed,
  Σ (k_a - n_a m / N) / sqrt(Σ n_a n_b m (N - m) / (N² (N - 1))), and `p` its two-sided normal p-value.
  With one stratum it is the pooled two-proportion z-test times sqrt((N - 1) / N) (hypergeometric variance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Stratum = tuple[int, int, int, int]


@dataclass(frozen=True)
class MantelHaenszel:
    """The combined estimate over `strata` two-sided strata; `z` and `p` are None where the test has no
    variance (the item is present in all or none of the graphs of every such stratum): not testable."""

    diff: float
    z: float | None
    p: float | None
    strata: int


def two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def mantel_haenszel(strata: Sequence[Stratum]) -> MantelHaenszel | None:
    """Combine `strata` (module docstring); strata with one side empty are skipped, None if all are."""
    used = [s for s in strata if s[1] > 0 and s[3] > 0]
    if not used:
        return None
    numerator = weight = observed = variance = 0.0
    for k_a, n_a, k_b, n_b in used:
        if not (0 <= k_a <= n_a and 0 <= k_b <= n_b):
            raise ValueError(f"stratum counts out of range: k_a={k_a} of {n_a}, k_b={k_b} of {n_b}")
        total, present = n_a + n_b, k_a + k_b
        numerator += (k_a * n_b - k_b * n_a) / total
        weight += n_a * n_b / total
        observed += k_a - n_a * present / total
        variance += n_a * n_b * present * (total - present) / (total**2 * (total - 1))
    if variance <= 0.0:
        return MantelHaenszel(diff=numerator / weight, z=None, p=None, strata=len(used))
    z = observed / math.sqrt(variance)
    return MantelHaenszel(diff=numerator / weight, z=z, p=two_sided_p(z), strata=len(used))


def bh_qvalues(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg q-values, in the order given: for the i-th smallest of m p-values,
    q = min over j >= i of m p_(j) / j, capped at 1. Rows with q < alpha control the FDR at alpha."""
    for p in p_values:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must lie in [0, 1], got {p!r}")
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    q = [1.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p_values[i] * m / rank)
        q[i] = running
    return q
