"""The bulk path (neo4j-admin import into an empty local instance) loads exactly what the online path does.

The online load goes to the session's test server; the bulk load needs its own local instance
("bulk-test", bolt 7703 / http 7493) because it stops and restarts it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import neo4j
import pytest
from test_ingest import graph_dir, tiny  # noqa: F401  (session fixtures: the real graph files)

from circuitbase.analysis.synthetic import SyntheticConfig, synthetic_graph
from circuitbase.dbserver.config import InstanceConfig, Layout
from circuitbase.dbserver.server import start, stop
from circuitbase.ingest.bulk import BulkConfig, BulkImportError, bulk_import_files, bulk_import_rows
from circuitbase.ingest.jobs import JobRecord
from circuitbase.ingest.loader import IngestConfig, graph_files, ingest_files
from circuitbase.ingest.model import IngestError
from circuitbase.ingest.schema import apply_schema, schema_statements, wipe_database
from circuitbase.ingest.verify import content_checksum
from circuitbase.ingest.writer import write_graph
from circuitbase.settings import URI_ENV, local_instance_settings, open_driver

pytestmark = pytest.mark.neo4j

BULK_INSTANCE = InstanceConfig(name="bulk-test", bolt_port=7703, http_port=7493, heap="1g", pagecache="256m")


@pytest.fixture(scope="module")
def bulk_layout() -> Iterator[Layout]:
    """The bulk test instance with an empty database, stopped at the end."""
    layout = Layout.resolve()
    stop(BULK_INSTANCE.name, layout=layout)
    data = layout.instance_dir(BULK_INSTANCE.name) / "data"
    for sub in ("databases", "transactions"):
        shutil.rmtree(data / sub / "neo4j", ignore_errors=True)
    start(BULK_INSTANCE, layout=layout, log=lambda _line: None)
    yield layout
    stop(BULK_INSTANCE.name, layout=layout)


def _files(directory: Path) -> list[Path]:
    """The four graphs, plus one Neuronpedia twin (the same graph id: both paths must skip it)."""
    files = graph_files(directory)
    return [*files, files[0].with_suffix(".json")]


def test_bulk_load_equals_online_load(
    clean_db: neo4j.Driver,
    graph_dir: Path,  # noqa: F811
    bulk_layout: Layout,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(URI_ENV, raising=False)
    apply_schema(clean_db)
    online = ingest_files(clean_db, _files(graph_dir))
    assert (online.loaded, online.skipped) == (4, 1)

    result = bulk_import_files(_files(graph_dir), instance=BULK_INSTANCE.name, layout=bulk_layout)
    summary = result.summary
    assert (summary.loaded, summary.skipped, summary.bad, summary.status) == (4, 1, [], "finished")
    assert (summary.nodes, summary.relationships) == (online.nodes, online.relationships)
    assert not result.directory.exists()  # CSV files removed after success

    settings = local_instance_settings(name=BULK_INSTANCE.name, cache_dir=bulk_layout.root)
    with open_driver(settings) as bulk_db:
        assert content_checksum(bulk_db) == content_checksum(clean_db)
        job = JobRecord(bulk_db, job_id=summary.job_id).read()
        assert (job["mode"], job["status"], job["graphs_loaded"], job["graphs_skipped"]) == (
            "bulk",
            "finished",
            4,
            1,
        )
        expected = set(re.findall(r"CREATE CONSTRAINT (\w+) IF NOT EXISTS", " ".join(schema_statements())))
        for db in (bulk_db, clean_db):
            names, _, _ = db.execute_query("SHOW CONSTRAINTS YIELD name RETURN collect(name) AS names")
            assert expected <= set(names[0]["names"]) and len(expected) > 5

    # the database is no longer empty: a second bulk load is refused before anything is stopped
    with pytest.raises(BulkImportError, match=r"holds \d+ nodes; the bulk path only makes a first load"):
        bulk_import_files(_files(graph_dir), instance=BULK_INSTANCE.name, layout=bulk_layout)
    monkeypatch.setenv(URI_ENV, "bolt://127.0.0.1:1")
    with pytest.raises(BulkImportError, match="only a local instance circuitbase manages"):
        bulk_import_files([], instance=BULK_INSTANCE.name, layout=bulk_layout, config=BulkConfig())
    monkeypatch.delenv(URI_ENV)
    with pytest.raises(BulkImportError, match="no local Neo4j instance 'never-made'"):
        bulk_import_files([], instance="never-made", layout=bulk_layout)


def test_bulk_rows_load_as_online_and_record_bad_graphs(
    clean_db: neo4j.Driver, bulk_layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(URI_ENV, raising=False)
    config = SyntheticConfig(n_graphs=6, seed=3)
    rows = [synthetic_graph(i, config=config) for i in range(config.n_graphs)]
    apply_schema(clean_db)
    for graph in rows:
        write_graph(clean_db, graph)
    settings = local_instance_settings(name=BULK_INSTANCE.name, cache_dir=bulk_layout.root)
    with open_driver(settings) as bulk_db:
        wipe_database(bulk_db)  # bulk loads only into an empty database
    made = iter([*rows, IngestError("graph 6: could not be made"), rows[0]])  # consumed once, as made
    result = bulk_import_rows(
        made,
        instance=BULK_INSTANCE.name,
        layout=bulk_layout,
        config=BulkConfig(ingest=IngestConfig(skip_bad=True)),
    )
    summary = result.summary
    assert (summary.loaded, summary.skipped, summary.status) == (6, 1, "finished_with_errors")
    assert summary.bad == ["graph 6: could not be made"]
    with open_driver(settings) as bulk_db:
        assert content_checksum(bulk_db) == content_checksum(clean_db)
