"""Supernodes: communities of the aggregated feature graph (Leiden or Louvain through GDS).

1. Project Feature/Token nodes and ATTRIBUTES edges seen in >= `min_graphs` graphs, undirected, weighted
   by the summed |attribution| over graphs (`gds.aggregated_projection`).
2. Run Leiden (default) or Louvain in write mode: every projected node gets a `community` property
   (stale values from an earlier run are removed first).
3. Replace the `(:Supernode)` nodes of earlier runs (user-defined ones, `algorithm = 'manual'`, are kept):
   one per community with >= `min_size` members, linked to its members by `HAS_MEMBER`, with its size,
   its number of features and the summed internal edge weight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import neo4j

from circuitbase.analysis.gds import AnalysisError, aggregated_projection, finish_run, open_gds, record_run

STEP = "communities"
ALGORITHMS = ("leiden", "louvain")

_CLEAR = """
MATCH (s:Supernode) WHERE s.algorithm <> 'manual'
DETACH DELETE s
WITH count(*) AS dropped
MATCH (n) WHERE (n:Feature OR n:Token) AND n.community IS NOT NULL
REMOVE n.community
"""
# one pass each (no query grows with a community's size squared): the supernodes with their sizes, their
# members linked in batches, then the internal weights from one aggregation over the ATTRIBUTES edges
_SUPERNODES = """
MATCH (n) WHERE (n:Feature OR n:Token) AND n.community IS NOT NULL
WITH n.community AS community, count(*) AS size, count(CASE WHEN n:Feature THEN 1 END) AS features
WHERE size >= $min_size
CREATE (:Supernode {key: $algorithm + '-' + toString(community), community: community, run: $run,
                    algorithm: $algorithm, size: size, features: features, internal_weight: 0.0})
RETURN count(*) AS supernodes
"""
_MEMBERS = """
MATCH (n) WHERE (n:Feature OR n:Token) AND n.community IS NOT NULL
CALL (n) {
  MATCH (s:Supernode {key: $algorithm + '-' + toString(n.community)})
  CREATE (s)-[:HAS_MEMBER]->(n)
} IN TRANSACTIONS OF $batch ROWS
"""
_INTERNAL_WEIGHT = """
MATCH (a)-[e:ATTRIBUTES]->(b)
WHERE (a:Feature OR a:Token) AND a.community IS NOT NULL AND e.graphs >= $min_graphs
  AND a.community = b.community
WITH a.community AS community, sum(e.sum_abs) AS internal
MATCH (s:Supernode {key: $algorithm + '-' + toString(community)})
SET s.internal_weight = internal
"""


@dataclass(frozen=True)
class CommunityConfig:
    """algorithm: 'leiden' (default) or 'louvain'. min_graphs: ATTRIBUTES edges seen in fewer graphs are
    left out of the projection (default 2). min_size: smallest community kept as a Supernode (default 2).
    resolution: Leiden's gamma (default 1.0; lower merges more, e.g. path-shaped circuits that modularity
    splits at 1.0; Louvain supports only 1.0). seed: Leiden's random seed (default 42); concurrency: GDS
    threads (default 1, reproducible). batch: HAS_MEMBER links written per transaction (default 10,000)."""

    algorithm: str = "leiden"
    min_graphs: int = 2
    min_size: int = 2
    resolution: float = 1.0
    seed: int = 42
    concurrency: int = 1
    batch: int = 10_000


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
    with driver.session(database=database) as session:  # IN TRANSACTIONS needs an auto-commit query
        record = session.run(
            _SUPERNODES, min_size=config.min_size, algorithm=config.algorithm, run=STEP
        ).single()
        session.run(_MEMBERS, algorithm=config.algorithm, batch=config.batch).consume()
        session.run(_INTERNAL_WEIGHT, algorithm=config.algorithm, min_graphs=config.min_graphs).consume()
    result["supernodes"] = int(record["supernodes"]) if record else 0
    finish_run(driver, STEP, result, database=database)
    return result
