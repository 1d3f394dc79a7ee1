"""Apply the graph schema in `circuitbase/cypher/schema.cypher` (constraints and indexes) idempotently.

1. Drop `//` comment lines, split the rest on `;` into statements.
2. Refuse any statement that is not a `CREATE CONSTRAINT|INDEX ... IF NOT EXISTS` (so re-running never fails).
3. Run each statement in its own auto-commit transaction (schema changes cannot share one with data).
"""

import re
from importlib import resources

import neo4j

_IDEMPOTENT = re.compile(r"^CREATE\s+(?:\w+\s+)?(?:CONSTRAINT|INDEX)\b.*\bIF\s+NOT\s+EXISTS\b", re.I | re.S)


class SchemaError(ValueError):
    """The schema file holds a statement that is not an idempotent constraint/index creation."""


def schema_statements(text: str | None = None) -> list[str]:
    """The statements of `text` (default: the packaged schema.cypher), validated as idempotent."""
    if text is None:
        text = resources.files("circuitbase.cypher").joinpath("schema.cypher").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    statements = [" ".join(part.split()) for part in code.split(";") if part.strip()]
    for statement in statements:
        if not _IDEMPOTENT.match(statement):
            raise SchemaError(f"schema statement is not `CREATE ... IF NOT EXISTS`: {statement[:120]!r}")
    return statements


def apply_schema(driver: neo4j.Driver, *, database: str = "neo4j", text: str | None = None) -> list[str]:
    """Run every schema statement (from `text`, default the packaged file) on `database`; returns them."""
    statements = schema_statements(text)
    with driver.session(database=database) as session:
        for statement in statements:
            session.run(statement).consume()
    return statements


def wipe_database(driver: neo4j.Driver, *, database: str = "neo4j", batch: int = 5000) -> None:
    """Delete every relationship, then every node, `batch` at a time (default 5,000).

    Relationships go first: a popular node's DETACH DELETE alone can outgrow the transaction memory.
    """
    statements = (
        "MATCH ()-[r]->() CALL (r) { DELETE r } IN TRANSACTIONS OF $batch ROWS",
        "MATCH (n) CALL (n) { DELETE n } IN TRANSACTIONS OF $batch ROWS",
    )
    with driver.session(database=database) as session:  # IN TRANSACTIONS needs an auto-commit query
        for statement in statements:
            session.run(statement, batch=batch).consume()
