"""Compare two prompt sets: features and recurring subcircuits whose support differs most, with effect sizes.

Sides: `split="correct"` compares graphs with correct = true (A) against correct = false (B); otherwise
A = prompts tagged `a_tag`, B = prompts tagged `b_tag` (both tags: A). For every feature (subcircuit) the
counts k of n graphs per side give the difference in proportions and a Haldane-corrected log-odds ratio
with its standard error and z (`compare_features.cypher`, `compare_subcircuits.cypher`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import neo4j

from circuitbase.analysis.gds import AnalysisError
from circuitbase.analysis.queries import run_query

SPLITS = ("correct",)

_SIDES = """
MATCH (g:Graph)-[:OF_PROMPT]->(p:Prompt)
WHERE g.complete = true
WITH g, CASE
    WHEN $split = 'correct' THEN CASE g.correct WHEN true THEN 'a' WHEN false THEN 'b' END
    WHEN $a_tag IN p.tags THEN 'a'
    WHEN $b_tag IN p.tags THEN 'b'
  END AS side
RETURN count(CASE side WHEN 'a' THEN 1 END) AS n_a, count(CASE side WHEN 'b' THEN 1 END) AS n_b
"""


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


@dataclass
class Comparison:
    """Graph counts per side and the ranked rows of both queries (fields as in the .cypher files)."""

    split: Split
    n_a: int
    n_b: int
    features: list[dict[str, Any]] = field(default_factory=list)
    subcircuits: list[dict[str, Any]] = field(default_factory=list)


def compare(
    driver: neo4j.Driver, split: Split, *, limit: int = 25, min_graphs: int = 2, database: str = "neo4j"
) -> Comparison:
    """Rank features and subcircuits by |diff| (then |z|) between the two sides: `limit` rows each (default
    25); features seen in fewer than `min_graphs` graphs of both sides together are left out (default 2)."""
    records, _, _ = driver.execute_query(_SIDES, split.params(), database_=database)
    n_a, n_b = int(records[0]["n_a"]), int(records[0]["n_b"])
    if n_a == 0 or n_b == 0:
        a, b = split.names()
        raise AnalysisError(f"nothing to compare: {n_a} complete graphs are {a!r}, {n_b} are {b!r}")
    params = {**split.params(), "limit": limit}
    return Comparison(
        split=split,
        n_a=n_a,
        n_b=n_b,
        features=run_query(driver, "compare_features", database=database, min_graphs=min_graphs, **params),
        subcircuits=run_query(driver, "compare_subcircuits", database=database, **params),
    )
