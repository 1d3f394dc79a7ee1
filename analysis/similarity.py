"""Prompt similarity: GDS node similarity (Jaccard over the features each graph uses), as SIMILAR edges.

1. Project a bipartite graph: complete `Graph` nodes -> the `Feature`s their pruned graphs keep an
   instance of (one relationship per distinct pair).
2. Delete the SIMILAR edges of an earlier run, then `gds.nodeSimilarity.write`: for every graph its
   `top_k` most similar graphs with Jaccard >= `cutoff`, as `(:Graph)-[:SIMILAR {score}]->(:Graph)`
   (written in both directions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import neo4j

from circuitbase.analysis.gds import finish_run, open_gds, projection, record_run

STEP = "similarity"

_CLEAR = "MATCH (:Graph)-[s:SIMILAR]->(:Graph) DELETE s"
PROJECTION = """
MATCH (g:Graph)
WHERE g.complete = true
MATCH (n:FeatureNode)-[:IN_GRAPH]->(g)
MATCH (n)-[:INSTANCE_OF]->(f:Feature)
WITH DISTINCT g, f
WITH gds.graph.project($name, g, f, {sourceNodeLabels: 'Graph', targetNodeLabels: 'Feature',
                                     relationshipType: 'USES_FEATURE'}) AS projected
RETURN projected.nodeCount AS nodes
"""


@dataclass(frozen=True)
class SimilarityConfig:
    """top_k: similar graphs kept per graph (default 10). cutoff: smallest Jaccard written (default 0.1).
    concurrency: GDS threads (default 1)."""

    top_k: int = 10
    cutoff: float = 0.1
    concurrency: int = 1


def find_similar_graphs(
    driver: neo4j.Driver, *, config: SimilarityConfig | None = None, database: str = "neo4j"
) -> dict[str, Any]:
    """Run the step (see the module docstring); returns the number of SIMILAR edges written."""
    config = config or SimilarityConfig()
    record_run(driver, STEP, asdict(config), database=database)
    gds = open_gds(driver, database=database)
    gds.run_cypher(_CLEAR)
    with projection(gds, "circuitbase-similarity", PROJECTION) as g:
        nodes = g.node_count()
        out = gds.node_similarity.write(
            g,
            write_relationship_type="SIMILAR",
            write_property="score",
            top_k=config.top_k,
            similarity_cutoff=config.cutoff,
            concurrency=config.concurrency,
        )
    result = {"nodes": nodes, "similar_edges": out.relationships_written}
    finish_run(driver, STEP, result, database=database)
    return result
