"""Writers accept `neo4j://` routing URIs, the scheme a Neo4j cluster is reached by: `circuitbase ingest`
through `neo4j://` to the single test instance gives the same database as the library's bolt ingest."""

from __future__ import annotations

from pathlib import Path

import neo4j
import pytest

from circuitbase.ingest.loader import ingest_files
from circuitbase.ingest.schema import apply_schema
from circuitbase.ingest.verify import content_checksum
from circuitbase.settings import Neo4jSettings
from tests.test_ingest import graph_dir, tiny  # noqa: F401  (session fixtures)
from tests.test_ingest_cli import cli

pytestmark = pytest.mark.neo4j


def test_ingest_through_a_routing_uri_equals_a_bolt_ingest(
    clean_db: neo4j.Driver,
    neo4j_settings: Neo4jSettings,
    graph_dir: Path,  # noqa: F811
) -> None:
    files = sorted(graph_dir.glob("*.safetensors"))
    apply_schema(clean_db)
    ingest_files(clean_db, files)
    expected = content_checksum(clean_db)
    clean_db.execute_query("MATCH (n) DETACH DELETE n")

    assert neo4j_settings.uri.startswith("bolt://")
    routing = Neo4jSettings(
        uri=neo4j_settings.uri.replace("bolt://", "neo4j://", 1),
        user=neo4j_settings.user,
        password=neo4j_settings.password,
        database=neo4j_settings.database,
    )
    with neo4j.GraphDatabase.driver(routing.uri, auth=(routing.user, routing.password)) as driver:
        driver.verify_connectivity()  # a routing driver: it fetched the instance's routing table
    job = cli(routing, "--graphs", str(graph_dir), "--no-progress")
    output = job.communicate(timeout=300)[0].decode()
    assert job.returncode == 0, output
    records, _, _ = clean_db.execute_query("MATCH (g:Graph {complete: true}) RETURN count(g) AS n")
    assert records[0]["n"] == len(files)
    assert content_checksum(clean_db) == expected
