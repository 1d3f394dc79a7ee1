"""GDS plumbing shared by the analysis steps: the client, named projections that are always dropped, records.

1. `open_gds` wraps an open neo4j driver in a `graphdatascience` client (no Arrow, no progress bars).
2. `projection` projects a graph with a Cypher aggregation (`gds.graph.project(...)` as an aggregating
   function, GDS 2.x) and drops it when the block ends, also on errors.
3. `record_run` / `finish_run` keep one `(:AnalysisRun {id: step})` node per analysis step with the
   parameters of its latest run (JSON), so results always say how they were made.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import neo4j
from graphdatascience import Graph, GraphDataScience

AGGREGATED_LABELS = ("Feature", "Token")

_PROJECT_AGGREGATED = """
MATCH (a)-[e:ATTRIBUTES]->(b)
WHERE e.graphs >= $min_graphs
WITH gds.graph.project($name, a, b, {
    sourceNodeLabels: [l IN labels(a) WHERE l IN $labels],
    targetNodeLabels: [l IN labels(b) WHERE l IN $labels],
    relationshipType: 'ATTRIBUTES',
    relationshipProperties: {weight: e.sum_abs, graphs: toFloat(e.graphs)}
}, {undirectedRelationshipTypes: $undirected}) AS projected
RETURN projected.nodeCount AS nodes, projected.relationshipCount AS relationships
"""
_RECORD = """
MERGE (r:AnalysisRun {id: $id})
SET r.params = $params, r.started = datetime(), r.status = 'running', r.finished = null, r.summary = null
"""
_FINISH = """
MATCH (r:AnalysisRun {id: $id})
SET r.status = 'finished', r.finished = datetime(), r.summary = $summary
"""


class AnalysisError(ValueError):
    """An analysis cannot run: no complete graphs, an empty comparison side, or bad parameters."""


def open_gds(driver: neo4j.Driver, *, database: str = "neo4j") -> GraphDataScience:
    """A GDS client over `driver` (the caller keeps owning the driver; do not close the client)."""
    return GraphDataScience(driver, database=database, arrow=False, show_progress=False)


def drop_if_exists(gds: GraphDataScience, name: str) -> None:
    gds.run_cypher(
        "CALL gds.graph.drop($name, false) YIELD graphName RETURN graphName", params={"name": name}
    )


@contextmanager
def projection(gds: GraphDataScience, name: str, query: str, **params: Any) -> Iterator[Graph]:
    """Project with `query` (it calls `gds.graph.project($name, ...)` and returns the node count first),
    yield the graph, then drop it; an empty projection raises AnalysisError."""
    drop_if_exists(gds, name)
    frame = gds.run_cypher(query, params={"name": name, **params})
    if frame.empty or not frame.iloc[0, 0]:
        raise AnalysisError(
            f"projection {name!r} is empty: no complete graphs (or none above the thresholds)"
        )
    try:
        yield gds.graph.get(name)
    finally:
        drop_if_exists(gds, name)


@contextmanager
def aggregated_projection(
    gds: GraphDataScience, name: str, *, min_graphs: int, undirected: bool
) -> Iterator[Graph]:
    """The aggregated feature graph (ATTRIBUTES seen in >= `min_graphs` graphs) weighted by summed |weight|.

    `weight` = ATTRIBUTES.sum_abs, the |attribution| summed over every graph the edge appears in, so it grows
    with how often and how strongly one node attributes to the other; `graphs` = that count.
    """
    undirected_types = ["*"] if undirected else []
    with projection(
        gds,
        name,
        _PROJECT_AGGREGATED,
        min_graphs=min_graphs,
        labels=list(AGGREGATED_LABELS),
        undirected=undirected_types,
    ) as graph:
        yield graph


def complete_graph_count(driver: neo4j.Driver, *, database: str = "neo4j") -> int:
    records, _, _ = driver.execute_query(
        "MATCH (g:Graph) WHERE g.complete = true RETURN count(g) AS n", database_=database
    )
    return int(records[0]["n"])


def record_run(driver: neo4j.Driver, step: str, params: dict[str, Any], *, database: str = "neo4j") -> None:
    """Mark step `step` as running with `params` (stored as JSON on its AnalysisRun node)."""
    driver.execute_query(
        _RECORD, id=step, params=json.dumps(params, sort_keys=True, default=str), database_=database
    )


def finish_run(driver: neo4j.Driver, step: str, summary: dict[str, Any], *, database: str = "neo4j") -> None:
    driver.execute_query(
        _FINISH, id=step, summary=json.dumps(summary, sort_keys=True, default=str), database_=database
    )
