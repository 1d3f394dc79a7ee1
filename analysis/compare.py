"""Compare two prompt sets: features and recurring subcircuits whose presence differs, tested per task.

Sides: `split="correct"` compares graphs with correct = true (A) against correct = false (B); otherwise
A = prompts tagged `a_tag`, B = prompts tagged `b_tag` (both tags: A).

Strata (`within`): the graphs are grouped into strata so that a difference between tasks is not read as a
difference between the sides. `"tags"` (the default for split='correct'): one stratum per prompt tag set
(the split's own tags left out); `"dataset"`: per `Prompt.dataset`; `"none"` (the default for tag vs tag):
one stratum; any other value is a tag prefix: per the set of the prompt's tags starting with it.

Each row (a feature or a subcircuit, counts k of n graphs per side) gets:
- crude effect sizes over all graphs: p_a, p_b, diff = p_a - p_b, a Haldane-corrected log-odds ratio with
  its standard error and Wald z (`log_odds`, `se`, `z`);
- the stratified test (`analysis.stats`): `mh_diff` the Mantel-Haenszel risk difference, `test_z` the
  Cochran-Mantel-Haenszel statistic, `p_value` its two-sided p-value, over the strata holding both
  sides; strata with one side only are left out (and reported in `Comparison.strata`);
- `q_value`: Benjamini-Hochberg over the tested rows of that table. A row is tested when its test has
  variance (it is present in some but not all graphs of a two-sided stratum); others get None.
Rows rank by |mh_diff| (untested last), then q, then |z|; by default only rows with q < `fdr` are kept.
A tag present (in >= 2 graphs) on one side only is reported in `Comparison.confounded_tags`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import neo4j

from circuitbase.analysis.gds import AnalysisError
from circuitbase.analysis.queries import run_query
from circuitbase.analysis.stats import bh_qvalues, mantel_haenszel

SPLITS = ("correct",)
WITHIN_KEYWORDS = ("tags", "dataset", "none")
DEFAULT_FDR = 0.05
TEST_NAME = "Cochran-Mantel-Haenszel (two-sided, over two-sided strata); Benjamini-Hochberg q per table"


@dataclass(frozen=True)
class Split:
    """Which two sets: `split='correct'`, or `a_tag` and `b_tag` (exactly one of the two ways)."""

    split: str | None = None
    a_tag: str | None = None
    b_tag: str | None = None

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise AnalysisError(f"split must be one of {SPLITS}, got {self.split!r}")
        tags = self.a_tag is not None and self.b_tag is not None
        if (self.split is None) == (not tags):
            raise AnalysisError("compare either with split='correct' or with both a_tag and b_tag")
        if tags and self.a_tag == self.b_tag:
            raise AnalysisError(f"a_tag and b_tag are both {self.a_tag!r}")

    def params(self) -> dict[str, Any]:
        return {"split": self.split, "a_tag": self.a_tag, "b_tag": self.b_tag}

    def names(self) -> tuple[str, str]:
        if self.split == "correct":
            return "correct", "incorrect"
        return str(self.a_tag), str(self.b_tag)

    def default_within(self) -> str:
        """'tags' for right vs wrong (stratified by task), 'none' for tag vs tag."""
        return "tags" if self.split == "correct" else "none"

    def own_tags(self) -> frozenset[str]:
        return frozenset(t for t in (self.a_tag, self.b_tag) if t is not None)


@dataclass(frozen=True)
class SideCount:
    """Graphs of each side in one stratum, or carrying one tag."""

    name: str
    n_a: int
    n_b: int

    @property
    def one_sided(self) -> bool:
        return self.n_a == 0 or self.n_b == 0


@dataclass
class Comparison:
    """Graph counts per side and per stratum, confounded tags, and the tested, ranked rows of both tables
    (`features`, `subcircuits`: only rows with q < fdr unless all rows were asked for; `*_tested` and
    `*_passing` count the rows tested and those with q < fdr before that filter and the limit)."""

    split: Split
    within: str
    fdr: float
    n_a: int
    n_b: int
    strata: list[SideCount] = field(default_factory=list)
    confounded_tags: list[SideCount] = field(default_factory=list)
    features: list[dict[str, Any]] = field(default_factory=list)
    subcircuits: list[dict[str, Any]] = field(default_factory=list)
    features_tested: int = 0
    features_passing: int = 0
    subcircuits_tested: int = 0
    subcircuits_passing: int = 0

    @property
    def fully_confounded(self) -> bool:
        """No stratum holds both sides: nothing can be estimated within a task."""
        return all(s.one_sided for s in self.strata)


def stratum_name(tags: Iterable[str], dataset: str | None, *, within: str, leave_out: frozenset[str]) -> str:
    """The stratum of a prompt with `tags` and `dataset` under `within` (module docstring); the split's own
    tags (`leave_out`) never define a stratum."""
    if within == "none":
        return "all"
    if within == "dataset":
        return dataset or "(no dataset)"
    kept = {t for t in tags if t not in leave_out and (within == "tags" or t.startswith(within))}
    return ",".join(sorted(kept)) or ("(untagged)" if within == "tags" else f"(no {within}* tag)")


def _stratum_counts(
    groups: list[dict], *, a: str, b: str, within: str, leave_out: frozenset[str]
) -> dict[str, list[int]]:
    """Stratum name -> [Σ group[a], Σ group[b]] over query groups {tags, dataset, a, b}."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for g in groups:
        name = stratum_name(g["tags"], g["dataset"], within=within, leave_out=leave_out)
        counts[name][0] += g[a]
        counts[name][1] += g[b]
    return counts


def _confounded_tags(groups: list[dict], *, leave_out: frozenset[str]) -> list[SideCount]:
    per_tag: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for g in groups:
        for tag in set(g["tags"]) - leave_out:
            per_tag[tag][0] += g["n_a"]
            per_tag[tag][1] += g["n_b"]
    found = [SideCount(t, a, b) for t, (a, b) in per_tag.items() if a + b >= 2 and (a == 0) != (b == 0)]
    return sorted(found, key=lambda c: (-(c.n_a + c.n_b), c.name))


def _crude(row: dict[str, Any], n_a: int, n_b: int) -> None:
    """p_a, p_b, diff and the Haldane-corrected log-odds ratio with its se and Wald z, in place."""
    k_a, k_b = row["k_a"], row["k_b"]
    log_odds = math.log((k_a + 0.5) / (n_a - k_a + 0.5)) - math.log((k_b + 0.5) / (n_b - k_b + 0.5))
    se = math.sqrt(1 / (k_a + 0.5) + 1 / (n_a - k_a + 0.5) + 1 / (k_b + 0.5) + 1 / (n_b - k_b + 0.5))
    row.update(
        n_a=n_a, n_b=n_b, p_a=k_a / n_a, p_b=k_b / n_b, diff=k_a / n_a - k_b / n_b,
        log_odds=log_odds, se=se, z=log_odds / se,
    )  # fmt: skip


def rank_table(
    rows: list[dict[str, Any]],
    strata: dict[str, list[int]],
    *,
    within: str,
    leave_out: frozenset[str],
    key: str,
    fdr: float = DEFAULT_FDR,
    all_rows: bool = False,
    limit: int = 25,
) -> tuple[list[dict[str, Any]], int, int]:
    """Test and rank `rows` (query rows with `groups`) against the strata's side counts `strata`
    (name -> [n_a, n_b]); returns the `limit` (default 25) best ranked rows with q < `fdr` (default 0.05;
    every row when `all_rows`), how many rows were tested and how many pass."""
    n_a, n_b = sum(c[0] for c in strata.values()), sum(c[1] for c in strata.values())
    tested: list[dict[str, Any]] = []
    for row in rows:
        present = _stratum_counts(row.pop("groups"), a="k_a", b="k_b", within=within, leave_out=leave_out)
        _crude(row, n_a, n_b)
        mh = mantel_haenszel([(present[s][0], a, present[s][1], b) for s, (a, b) in strata.items()])
        if mh is None:  # no stratum holds both sides: nothing to estimate
            row.update(mh_diff=None, test_z=None, p_value=None, q_value=None)
        else:
            row.update(mh_diff=mh.diff, test_z=mh.z, p_value=mh.p, q_value=None)
        if row["p_value"] is not None:
            tested.append(row)
    for row, q in zip(tested, bh_qvalues([r["p_value"] for r in tested]), strict=True):
        row["q_value"] = q
    passing = sum(r["q_value"] < fdr for r in tested)
    shown = rows if all_rows else [r for r in tested if r["q_value"] < fdr]
    shown.sort(
        key=lambda r: (
            r["q_value"] is None,
            -abs(r["mh_diff"] or 0.0),
            1.0 if r["q_value"] is None else r["q_value"],
            -abs(r["z"]),
            str(r[key]),
        )
    )
    return shown[:limit], len(tested), passing


def compare(
    driver: neo4j.Driver,
    split: Split,
    *,
    within: str | None = None,
    fdr: float = DEFAULT_FDR,
    all_rows: bool = False,
    limit: int = 25,
    min_graphs: int = 2,
    database: str = "neo4j",
) -> Comparison:
    """Test every feature and subcircuit for a difference between the sides within strata (`within`,
    default `split.default_within()`), and keep the `limit` (default 25) best ranked rows of each with
    q < `fdr` (default 0.05; every row when `all_rows`). Features seen in fewer than `min_graphs`
    graphs of both sides together are not tested (default 2)."""
    within = split.default_within() if within is None else within
    if not within:
        raise AnalysisError(f"within must be one of {WITHIN_KEYWORDS} or a tag prefix, got ''")
    if not 0.0 < fdr <= 1.0:
        raise AnalysisError(f"fdr must lie in (0, 1], got {fdr}")
    if limit < 1:
        raise AnalysisError(f"limit must be at least 1, got {limit}")
    leave_out = split.own_tags()
    groups = run_query(driver, "compare_strata", database=database, **split.params())
    strata = _stratum_counts(groups, a="n_a", b="n_b", within=within, leave_out=leave_out)
    n_a, n_b = sum(c[0] for c in strata.values()), sum(c[1] for c in strata.values())
    if n_a == 0 or n_b == 0:
        a, b = split.names()
        raise AnalysisError(f"nothing to compare: {n_a} complete graphs are {a!r}, {n_b} are {b!r}")
    options = {"within": within, "leave_out": leave_out, "fdr": fdr, "all_rows": all_rows, "limit": limit}
    features = run_query(
        driver, "compare_features", database=database, min_graphs=min_graphs, **split.params()
    )
    features, features_tested, features_passing = rank_table(features, strata, key="feature", **options)
    subcircuits = run_query(driver, "compare_subcircuits", database=database, **split.params())
    subcircuits, subcircuits_tested, subcircuits_passing = rank_table(
        subcircuits, strata, key="subcircuit", **options
    )
    return Comparison(
        split=split,
        within=within,
        fdr=fdr,
        n_a=n_a,
        n_b=n_b,
        strata=sorted((SideCount(s, a, b) for s, (a, b) in strata.items()), key=lambda c: c.name),
        confounded_tags=_confounded_tags(groups, leave_out=leave_out),
        features=features,
        subcircuits=subcircuits,
        features_tested=features_tested,
        features_passing=features_passing,
        subcircuits_tested=subcircuits_tested,
        subcircuits_passing=subcircuits_passing,
    )
