"""Hub features: PageRank and betweenness centrality on the aggregated feature graph, written as properties.

1. Project Feature/Token nodes and ATTRIBUTES edges seen in >= `min_graphs` graphs, directed (attribution
   flows from tokens through features to logits), weighted by the summed |attribution|.
2. Remove the `pagerank` / `betweenness` properties of an earlier run, then write weighted PageRank and
   (unweighted, shortest-hop) betweenness to every projected Feature and Token node.

Exact betweenness costs one search per node (nodes x relationships), so it grows with the square of the
aggregated graph: above `betweenness_sources` nodes it counts the shortest paths from that many sampled
sources only (GDS `samplingSize`, seeded; scores are not scaled up, their ranking is what they are for).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import neo4j

from circuitbase.analysis.gds import aggregated_projection, finish_run, open_gds, record_run

STEP = "hubs"

_CLEAR = """
MATCH (n) WHERE (n:Feature OR n:Token) AND (n.pagerank IS NOT NULL OR n.betweenness IS NOT NULL)
REMOVE n.pagerank, n.betweenness
"""


@dataclass(frozen=True)
class HubConfig:
    """min_graphs: ATTRIBUTES edges seen in fewer graphs are left out (default 2). damping: PageRank damping
    factor (default 0.85). betweenness_sources: most source nodes of betweenness (default 2,000; more nodes
    are sampled, None: always exact). seed: the sample's random seed (default 42). concurrency: GDS threads
    (default 1)."""

    min_graphs: int = 2
    damping: float = 0.85
    betweenness_sources: int | None = 2_000
    seed: int = 42
    concurrency: int = 1


def find_hubs(
    driver: neo4j.Driver, *, config: HubConfig | None = None, database: str = "neo4j"
) -> dict[str, Any]:
    """Run the step (see the module docstring); returns counts, PageRank's iterations, betweenness sources."""
    config = config or HubConfig()
    record_run(driver, STEP, asdict(config), database=database)
    gds = open_gds(driver, database=database)
    gds.run_cypher(_CLEAR)
    with aggregated_projection(gds, "circuitbase-hubs", min_graphs=config.min_graphs, undirected=False) as g:
        result: dict[str, Any] = {"nodes": g.node_count(), "relationships": g.relationship_count()}
        rank = gds.page_rank.write(
            g,
            write_property="pagerank",
            relationship_weight_property="weight",
            damping_factor=config.damping,
            concurrency=config.concurrency,
        )
        sources = config.betweenness_sources
        sampled = sources is not None and g.node_count() > sources
        sampling = {"sampling_size": sources, "sampling_seed": config.seed} if sampled else {}
        gds.betweenness.write(g, write_property="betweenness", concurrency=config.concurrency, **sampling)
        result["pagerank_iterations"] = rank.ran_iterations
        result["betweenness_sources"] = sources if sampled else result["nodes"]
    finish_run(driver, STEP, result, database=database)
    return result
