"""The writer's statements use the index seeks they were designed around (their EXPLAIN plans; no timing).

A graph's write must cost the same however many graphs are loaded: every row is found by a seek in a
unique or range index, never by a label or relationship scan, and an aggregated ATTRIBUTES edge is
found by its `pair` key, never by expanding a popular Feature's edges.
"""

from __future__ import annotations

import re

import neo4j
import pytest

from circuitbase.analysis.synthetic import SyntheticConfig, synthetic_graph
from circuitbase.ingest.schema import apply_schema
from circuitbase.ingest.writer import (
    Statement,
    claim_statement,
    pair_key,
    shared_statements,
    write_graph,
    write_statements,
)

pytestmark = pytest.mark.neo4j

CONFIG = SyntheticConfig(n_graphs=8)
# statement name -> the indexes (Label(property)) its plan must seek, and no others
SEEKS = {
    "claim": {"Graph(id)"},
    "clear": {"GraphNode(graph)", "Graph(id)"},
    "shared": {"Model(name)", "TranscoderSet(name)"},
    "head": {"Graph(id)", "Prompt(id)"},
    "features": {"TranscoderSet(name)", "Feature(key)"},
    "tokens": {"Token(key)"},
    "nodes FeatureNode": {"Graph(id)", "Feature(key)"},
    "nodes ErrorNode": {"Graph(id)", "Feature(key)"},
    "nodes TokenNode": {"Graph(id)", "Token(key)"},
    "nodes LogitNode": {"Graph(id)", "Token(key)"},
    "edges": {"GraphNode(graph)"},
    "finish": {"Graph(id)", "IngestJob(id)"},
    **{
        f"aggregate {s}->{t}": {f"{s}(key)", f"{t}(key)", "ATTRIBUTES(pair)"}
        for s in ("Feature", "Token")
        for t in ("Feature", "Token")
    },
}
_INDEX = re.compile(r":(\w+)\((\w+)\)")


def operators(plan: dict) -> list[tuple[str, str]]:
    """(operator, details) of every operator of a plan, depth first."""
    out = [(plan["operatorType"].split("@")[0], str(plan.get("args", {}).get("Details", "")))]
    for child in plan.get("children", []):
        out += operators(child)
    return out


def explain(driver: neo4j.Driver, statement: Statement) -> list[tuple[str, str]]:
    with driver.session() as session:
        summary = session.run("EXPLAIN " + statement.text, statement.params).consume()
    assert summary.plan is not None
    return operators(summary.plan)


@pytest.mark.parametrize("loaded", [0, CONFIG.n_graphs - 1])
def test_every_write_statement_seeks_its_indexes(clean_db: neo4j.Driver, loaded: int) -> None:
    """Planned against an empty store and one holding graphs (so the statistics differ)."""
    apply_schema(clean_db)
    for i in range(loaded):
        write_graph(clean_db, synthetic_graph(i, config=CONFIG))
    rows = synthetic_graph(loaded, config=CONFIG)
    statements = [*shared_statements(rows), claim_statement(rows), *write_statements(rows, job="job")]
    names = [s.name for s in statements]
    assert "aggregate Feature->Feature" in names and "edges" in names
    for statement in statements:
        ops = explain(clean_db, statement)
        scans = [op for op, _ in ops if "Scan" in op]
        assert scans == [], f"{statement.name}: {scans}"
        seeks = {
            f"{label}({key})" for op, details in ops if "Seek" in op for label, key in _INDEX.findall(details)
        }
        assert seeks == SEEKS[statement.name], statement.name
        expanded = [details for op, details in ops if op.startswith("Expand") and "ATTRIBUTES" in details]
        assert expanded == [], f"{statement.name} expands ATTRIBUTES: {expanded}"
        if statement.name.startswith("aggregate"):  # the edge by its key, before the endpoints are compared
            pair = [op for op, details in ops if ":ATTRIBUTES(pair)" in details]
            assert pair == ["DirectedRelationshipUniqueIndexSeek(Locking)"], statement.name


def test_a_pair_hash_collision_fails_the_write_and_leaves_the_graph_unloaded(clean_db: neo4j.Driver) -> None:
    """An ATTRIBUTES edge holding a new pair's hash between other endpoints is not updated in its place:
    the create then hits the unique constraint and the graph's transaction rolls back."""
    apply_schema(clean_db)
    write_graph(clean_db, synthetic_graph(0, config=CONFIG))
    rows = synthetic_graph(1, config=CONFIG)
    cols = rows.aggregate["Feature", "Feature"]
    new_pairs = [
        (s, t)
        for s, t in zip(cols["s"], cols["t"], strict=True)
        if not clean_db.execute_query(
            "MATCH (:Feature {key: $s})-[e:ATTRIBUTES]->(:Feature {key: $t}) RETURN e", s=s, t=t
        ).records
    ]
    source, target = new_pairs[0]
    planted, _, _ = clean_db.execute_query(
        """
        MATCH (x:Feature) WHERE NOT x.key IN [$s, $t] WITH x ORDER BY x.key LIMIT 2
        WITH collect(x) AS xs
        WITH xs[0] AS a, xs[1] AS b
        CREATE (a)-[e:ATTRIBUTES {pair: $pair, graphs: 1, edges: 1, sum: 1.0, sum_abs: 1.0, max_abs: 1.0}]
            ->(b)
        RETURN elementId(e) AS id
        """,
        s=source,
        t=target,
        pair=pair_key(source, target),
    )
    with pytest.raises(neo4j.exceptions.ConstraintError, match="pair"):
        write_graph(clean_db, rows)
    records, _, _ = clean_db.execute_query(
        "MATCH (g:Graph {id: $id}) RETURN g.complete AS complete", id=rows.id
    )
    assert [r["complete"] for r in records] in ([], [False])
    left, _, _ = clean_db.execute_query(
        "MATCH ()-[e]->() WHERE elementId(e) = $id RETURN e.graphs AS graphs, e.sum AS sum",
        id=planted[0]["id"],
    )
    assert (left[0]["graphs"], left[0]["sum"]) == (1, 1.0)
    nodes, _, _ = clean_db.execute_query("MATCH (n:GraphNode {graph: $id}) RETURN count(n) AS n", id=rows.id)
    assert nodes[0]["n"] == 0
