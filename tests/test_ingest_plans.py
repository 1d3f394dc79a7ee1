"""The writer's statements use the index seeks they were designed around (their EXPLAIN plans; no timing).

A graph's write must cost the same however many graphs are loaded: every row is found by a seek in a
unique or range index, never by a label or relationship scan, and an aggregated ATTRIBUTES edge is
found by its `pair` key, never by expanding a popular Feature's edges.
"""

from __future__ import annotations

import re

import neo4j
import pytest

from circuitbase.analysis.gds import seen_in_min_graphs
from circuitbase.analysis.queries import load_query
from circuitbase.analysis.synthetic import SyntheticConfig, synthetic_graph
from circuitbase.ingest.schema import apply_schema
from circuitbase.ingest.writer import (
    Statement,
    claim_statement,
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


def recurring_index_reads(ops: list[tuple[str, str]]) -> int:
    """How many operators read ATTRIBUTES through the index on `recurring` (a seek or a scan of it: it holds
    only recurring edges); -1 when any scans all ATTRIBUTES edges."""
    if [op for op, _ in ops if op in ("DirectedRelationshipTypeScan", "DirectedAllRelationshipsScan")]:
        return -1
    reads = ("DirectedRelationshipIndexSeek", "DirectedRelationshipIndexScan")
    return sum(op in reads and ":ATTRIBUTES(recurring)" in details for op, details in ops)


_COUNT_SEEN_IN = "MATCH ()-[e:ATTRIBUTES]->() WHERE __seen_in__ RETURN count(e) AS n"


@pytest.mark.parametrize("min_graphs", [1, 2, 3])
def test_analysis_seeks_recurring_edges_and_counts_them_right(
    clean_db: neo4j.Driver, min_graphs: int
) -> None:
    """From two graphs up, the aggregated edges analysis reads are a seek on ATTRIBUTES(recurring) and
    are exactly the edges with `graphs >= k` (as a scan finds them); below two, every edge."""
    apply_schema(clean_db)
    for i in range(CONFIG.n_graphs):
        write_graph(clean_db, synthetic_graph(i, config=CONFIG))
    query = seen_in_min_graphs(_COUNT_SEEN_IN, min_graphs)
    ops = explain(clean_db, Statement("seen in", query, {"min_graphs": min_graphs}))
    assert recurring_index_reads(ops) == (1 if min_graphs >= 2 else -1), ops
    counted = clean_db.execute_query(query, min_graphs=min_graphs).records[0]["n"]
    scanned = clean_db.execute_query(
        "MATCH ()-[e:ATTRIBUTES]->() "
        "RETURN count(e) AS n, sum(CASE WHEN e.graphs >= $k THEN 1 ELSE 0 END) AS k",
        k=min_graphs,
    ).records[0]
    assert counted == scanned["k"] and 0 < counted <= scanned["n"]
    assert (counted < scanned["n"]) == (min_graphs >= 2)

    candidates = load_query("recurring_candidates")
    ops = explain(clean_db, Statement("candidates", candidates, {"min_support": 2, "start_tokens": []}))
    assert recurring_index_reads(ops) == 1, ops


def test_schema_migrates_a_database_indexed_on_graphs(clean_db: neo4j.Driver) -> None:
    """A database from before `recurring` (edges without it, an index on `graphs`) is marked and migrated."""
    apply_schema(clean_db)
    for i in range(3):
        write_graph(clean_db, synthetic_graph(i, config=CONFIG))
    clean_db.execute_query("MATCH ()-[e:ATTRIBUTES]->() REMOVE e.recurring")
    clean_db.execute_query("CREATE INDEX attributes_graphs FOR ()-[e:ATTRIBUTES]-() ON (e.graphs)")
    apply_schema(clean_db)
    names = clean_db.execute_query("SHOW INDEXES YIELD name RETURN collect(name) AS n").records[0]["n"]
    assert "attributes_graphs" not in names and "attributes_recurring" in names
    marks = clean_db.execute_query(
        "MATCH ()-[e:ATTRIBUTES]->() RETURN e.graphs >= 2 AS recurs, collect(DISTINCT e.recurring) AS marks"
    ).records
    assert {r["recurs"]: r["marks"] for r in marks} == {True: [True], False: []}
