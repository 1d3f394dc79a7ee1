"""`:IngestJob` records: one node per ingest run, so the database says what was loaded, when and how.

A job starts as `running`; the writer bumps `graphs_loaded` / `graphs_skipped` inside each graph's own
transaction (so the counts survive a crash exactly), errors are appended as they happen, and the job
ends as `finished`, `finished_with_errors` or `failed`. A job killed outright stays `running`.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import neo4j

_START = """
CREATE (j:IngestJob {id: $id, status: 'running', started: datetime(), parameters: $parameters,
                     graphs_loaded: 0, graphs_skipped: 0, errors: []})
"""
_ERROR = "MATCH (j:IngestJob {id: $id}) SET j.errors = j.errors + $error"
_SKIPPED = "MATCH (j:IngestJob {id: $id}) SET j.graphs_skipped = j.graphs_skipped + $n"
_FINISH = "MATCH (j:IngestJob {id: $id}) SET j.status = $status, j.finished = datetime()"
_GET = """
MATCH (j:IngestJob {id: $id})
RETURN j {.*, started: toString(j.started), finished: toString(j.finished)}
"""


class JobRecord:
    """The `:IngestJob` node of one run."""

    def __init__(self, driver: neo4j.Driver, *, database: str = "neo4j", job_id: str | None = None) -> None:
        self.driver, self.database = driver, database
        self.id = job_id or f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"

    def start(self, parameters: dict[str, Any]) -> JobRecord:
        """Create the node; `parameters` are stored as JSON (Neo4j properties cannot be maps)."""
        self._run(_START, id=self.id, parameters=json.dumps(parameters, sort_keys=True, default=str))
        return self

    def error(self, message: str) -> None:
        self._run(_ERROR, id=self.id, error=message)

    def count_skipped(self, n: int) -> None:
        """Count graphs skipped without a write (found complete before any work was done)."""
        if n:
            self._run(_SKIPPED, id=self.id, n=n)

    def finish(self, status: str) -> None:
        self._run(_FINISH, id=self.id, status=status)

    def read(self) -> dict[str, Any]:
        records, _, _ = self.driver.execute_query(_GET, id=self.id, database_=self.database)
        if not records:
            raise LookupError(f"no IngestJob {self.id!r}")
        return dict(records[0][0])

    def _run(self, query: str, **params: Any) -> None:
        self.driver.execute_query(query, **params, database_=self.database)
