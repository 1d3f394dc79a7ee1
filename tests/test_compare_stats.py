"""The comparison statistics (analysis.stats, analysis.compare.rank_table) against hand-computed values and
a synthetic table with planted differences: pure functions, no database."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from circuitbase.analysis.compare import DEFAULT_FDR, rank_table, stratum_name
from circuitbase.analysis.stats import bh_qvalues, mantel_haenszel, two_sided_p
from tests.numerics import assert_close


def close(actual: list[float], expected: list[float], *, rel: float = 1e-9) -> None:
    assert_close(
        torch.tensor(actual, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), rel=rel
    )


def test_bh_q_values_match_a_hand_computed_example() -> None:
    # sorted p 0.01, 0.02, 0.025, 0.5 -> m p / rank = 0.04, 0.04, 0.0333, 0.5 -> running minimum from the top
    close(bh_qvalues([0.02, 0.5, 0.01, 0.025]), [1 / 30, 0.5, 1 / 30, 1 / 30])
    # ties, any order: sorted 0.001, 0.02, 0.04, 0.04, 0.3 -> 0.005, 0.05, 0.0667, 0.05, 0.3
    # -> running minimum 0.005, 0.05, 0.05, 0.05, 0.3
    close(bh_qvalues([0.04, 0.001, 0.04, 0.3, 0.02]), [0.05, 0.005, 0.05, 0.3, 0.05])
    close(bh_qvalues([0.9, 0.8]), [0.9, 0.9])  # never above the largest p, capped at 1
    assert bh_qvalues([]) == []
    with pytest.raises(ValueError, match="p-values must lie in"):
        bh_qvalues([0.1, 1.5])


def test_mantel_haenszel_matches_a_hand_computed_example() -> None:
    # stratum 1: 8/10 vs 2/10 (N 20, m 10): observed - expected 8 - 5 = 3, variance 10*10*10*10 / (400*19)
    # stratum 2: 3/5 vs 1/5 (N 10, m 4): 3 - 2 = 1, variance 5*5*4*6 / (100*9); one-sided stratum ignored
    mh = mantel_haenszel([(8, 10, 2, 10), (3, 5, 1, 5), (4, 4, 0, 0)])
    assert mh is not None and mh.strata == 2
    z = 4 / math.sqrt(10000 / 7600 + 600 / 900)
    # risk difference: (60/20 + 10/10) / (100/20 + 25/10) = 4 / 7.5
    close([mh.diff, mh.z, mh.p], [4 / 7.5, z, math.erfc(z / math.sqrt(2))])
    # one stratum: the pooled two-proportion z-test times sqrt((N - 1) / N)
    one = mantel_haenszel([(12, 30, 4, 25)])
    pooled = 16 / 55
    two_proportion = (12 / 30 - 4 / 25) / math.sqrt(pooled * (1 - pooled) * (1 / 30 + 1 / 25))
    assert one is not None
    close([one.diff, one.z], [12 / 30 - 4 / 25, two_proportion * math.sqrt(54 / 55)])
    close([two_sided_p(-1.959963984540054)], [0.05], rel=1e-9)
    assert mantel_haenszel([(3, 3, 0, 0), (0, 0, 0, 5)]) is None  # no stratum holds both sides
    flat = mantel_haenszel([(4, 4, 6, 6), (0, 3, 0, 2)])  # present in all or none of every stratum
    assert flat is not None and (flat.diff, flat.z, flat.p) == (0.0, None, None)
    with pytest.raises(ValueError, match="stratum counts out of range"):
        mantel_haenszel([(5, 4, 0, 3)])


def test_strata_names_follow_within() -> None:
    tags, own = ["two_hop", "held_out", "task:capitals"], frozenset({"held_out"})
    assert stratum_name(tags, "toy", within="tags", leave_out=own) == "task:capitals,two_hop"
    assert stratum_name(tags, "toy", within="task:", leave_out=own) == "task:capitals"
    assert stratum_name(["x"], "toy", within="task:", leave_out=own) == "(no task:* tag)"
    assert stratum_name(tags, None, within="dataset", leave_out=own) == "(no dataset)"
    assert stratum_name(tags, "toy", within="none", leave_out=own) == "all"


def planted_table(seed: int, *, n: int = 40, planted: int = 20, null: int = 400) -> list[dict]:
    """Query-like rows on one stratum of n graphs per side: `planted` features present with probability
    0.8 on A and 0.1 on B, `null` ones with the same probability (0.05 to 0.6) on both sides."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(planted + null):
        p_a, p_b = (0.8, 0.1) if i < planted else (float(rng.uniform(0.05, 0.6)),) * 2
        k_a, k_b = int(rng.binomial(n, p_a)), int(rng.binomial(n, p_b))
        group = {"tags": ["task"], "dataset": "d", "k_a": k_a, "k_b": k_b}
        rows.append(
            {
                "feature": f"{'planted' if i < planted else 'null'}/{i}",
                "k_a": k_a,
                "k_b": k_b,
                "groups": [group],
            }
        )
    return rows


def test_the_fdr_default_keeps_planted_differences_and_drops_null_ones() -> None:
    n, planted, null = 40, 20, 400
    false_share, missed = [], 0
    for seed in range(10):
        rows = planted_table(seed, n=n, planted=planted, null=null)
        testable = sum(0 < r["k_a"] + r["k_b"] < 2 * n for r in rows)  # others have no variance
        shown, tested, passing = rank_table(
            rows, {"task": [n, n]}, within="tags", leave_out=frozenset(), key="feature", limit=1000
        )
        assert tested == testable > planted + null - 5 and passing == len(shown)
        assert all(r["q_value"] < DEFAULT_FDR for r in shown)
        found = {r["feature"] for r in shown}
        missed += sum(f"planted/{i}" not in found for i in range(planted))
        false_share.append(sum(f.startswith("null/") for f in found) / max(len(found), 1))
    print(f"missed {missed}, false discovery share {np.mean(false_share):.3f}")
    assert missed == 0  # 0.8 vs 0.1 over 40 graphs a side (z about 6) is never lost
    assert np.mean(false_share) <= DEFAULT_FDR * 1.5  # BH keeps the share of false discoveries near 5%
    everything, _, _ = rank_table(
        planted_table(0), {"task": [n, n]}, within="tags", leave_out=frozenset(), key="feature",
        all_rows=True, limit=1000,
    )  # fmt: skip
    assert len(everything) == planted + null
    assert all(r["feature"].startswith("planted/") for r in everything[:planted])
