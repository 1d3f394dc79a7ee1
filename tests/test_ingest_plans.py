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
