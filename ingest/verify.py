"""A content checksum of the loaded graph data, to compare two databases or two loads of the same files.

1. Every node except `:IngestJob` (job records differ from run to run) is written as its sorted labels
   and its properties in canonical JSON; nodes are identified by that text.
2. Every relationship between such nodes is written as (start text, type, properties, end text).
3. The sorted lines are hashed with SHA-256. Floats are compared exactly, so two loads match only if
   they wrote the same values in the same order of accumulation.
"""

from __future__ import annotations

import hashlib
import json

import neo4j

_NODES = """
MATCH (n) WHERE NOT n:IngestJob
RETURN elementId(n) AS id, labels(n) AS labels, properties(n) AS props
"""
_RELATIONSHIPS = """
MATCH (a)-[r]->(b) WHERE NOT a:IngestJob AND NOT b:IngestJob
RETURN elementId(a) AS a, type(r) AS type, properties(r) AS props, elementId(b) AS b
"""


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def content_checksum(driver: neo4j.Driver, *, database: str = "neo4j") -> str:
    """SHA-256 over all graph content (see the module docstring); meant for test-sized databases."""
    with driver.session(database=database, default_access_mode=neo4j.READ_ACCESS) as session:
        text = {r["id"]: _canonical([sorted(r["labels"]), r["props"]]) for r in session.run(_NODES)}
        lines = sorted(text.values())
        relationships = session.run(_RELATIONSHIPS)
        lines += sorted(
            _canonical([text[r["a"]], r["type"], r["props"], text[r["b"]]]) for r in relationships
        )
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()
