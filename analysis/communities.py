"""Supernodes: communities of the aggregated feature graph (Leiden or Louvain through GDS).

1. Project Feature/Token nodes and ATTRIBUTES edges seen in >= `min_graphs` graphs, undirected, weighted
   by the summed |attribution| over graphs (`gds.aggregated_projection`).
2. Run Leiden (default) or Louvain in write mode: every projected node gets a `community` property
   (stale values from an earlier run are removed first).
3. Replace all `(:Supernode)` nodes: one per community with >= `min_size` members, linked to its members
   by `HAS_MEMBER`, with its size, its number of features and the summed internal edge weight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import neo4j

from circuitbase.analysis.gds import AnalysisError, aggregated_projection, finish_run, open_gds, record_run

STEP = "communities"
ALGORITHMS = ("leiden", "louvain")

_CLEAR = """
MATCH (s:Supernode) DETACH DELETE s
WITH count(*) AS dropped
MATCH (n) WHERE (n:Feature OR n:Token) AND n.community IS NOT NULL
REMOVE n.community
"""
_SUPERNODES = """
MATCH (n) WHERE (n:Feature OR n:Token) AND n.community IS NOT NULL
WITH n.community AS community, collect(n) AS members
WHERE size(members) >= $min_size
CREATE (s:Supernode {key: $algorithm + '-' + toString(community), community: community, run: $run,
                     algorithm: $algorithm, size: size(members),
                     features: size([m IN members WHERE m:Feature])})
WITH s, members
UNWIND members AS m
CREATE (s)-[:HAS_MEMBER]->(m)
WITH DISTINCT s
OPTIONAL MATCH (s)-[:HAS_MEMBER]->(a)-[e:ATTRIBUTES]->(b)<-[:HAS_MEMBER]-(s)
WHERE e.graphs >= $min_graphs
WITH s, coalesce(sum(e.sum_abs), 0.0) AS internal
SET s.internal_weight = internal
RETURN count(s) AS supernodes
"""


@dataclass(frozen=True)
class CommunityConfig:
    """algorithm: 'leiden' (default) or 'louvain'. min_graphs: ATTRIBUTES edges seen in fewer graphs are
    left out of the projection (default 2). min_size: smallest community kept as a Supernode (default 2).
    resolution: Leiden's gamma (default 1.0; lower merges more, e.g. path-shaped circuits that modularity
    splits at 1.0; Louvain supports only 1.0). seed: Leiden's random seed (default 42); concurrency: GDS
    threads (default 1, reproducible)."""

    algorithm: str = "leiden"
    min_graphs: int = 2
    min_size: int = 2
    resolution: float = 1.0
    seed: int = 42
    concurrency: int = 1


def find_supernodes(
    driver: neo4j.Driver, *, config: CommunityConfig | None = None, database: str = "neo4j"
) -> dict[str, Any]:
    """Run the step (see the module docstring); returns counts and the algorithm's modularity."""
    config = config or CommunityConfig()
    if config.algorithm not in ALGORITHMS:
        raise AnalysisError(f"community algorithm must be one of {ALGORITHMS}, got {config.algorithm!r}")
    if config.algorithm == "louvain" and config.resolution != 1.0:
        raise AnalysisError("Louvain in GDS has no resolution parameter; use algorithm='leiden'")
    record_run(driver, STEP, asdict(config), database=database)
    gds = open_gds(driver, database=database)
    gds.run_cypher(_CLEAR)
    with aggregated_projection(
        gds, "circuitbase-communities", min_graphs=config.min_graphs, undirected=True
    ) as g:
        common: dict[str, Any] = {
            "write_property": "community",
            "relationship_weight_property": "weight",
            "concurrency": config.concurrency,
        }
        if config.algorithm == "leiden":
            out = gds.leiden.write(g, random_seed=config.seed, gamma=config.resolution, **common)
        else:
            out = gds.louvain.write(g, **common)
        result: dict[str, Any] = {
            "nodes": g.node_count(),
            "communities": out.community_count,
            "modularity": out.modularity,
        }
    frame = gds.run_cypher(
        _SUPERNODES,
        params={
            "min_size": config.min_size,
            "algorithm": config.algorithm,
            "run": STEP,
            "min_graphs": config.min_graphs,
        },
    )
    result["supernodes"] = int(frame["supernodes"][0]) if len(frame) else 0
    finish_run(driver, STEP, result, database=database)
    return result
