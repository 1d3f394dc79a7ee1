"""The Cypher query library: `.cypher` files of the `circuitbase.cypher` package, run by name with parameters.

1. A query file opens with `//` comment lines: what it returns, then `// :param name => value` examples
   (so the file runs as-is in the Neo4j Browser after setting those parameters).
2. `load_query(name)` strips the comment lines; `query_params(name)` reads the example parameters'
   names, which `run_query` requires to be given (missing or unknown names raise QueryError).
3. Queries are only ever parameterised: no text from the caller is pasted into Cypher.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

import neo4j

_PARAM = re.compile(r"^//\s*:param\s+(\w+)\s*=>")
NOT_QUERIES = frozenset({"schema"})


class QueryError(ValueError):
    """An unknown query name, or parameters that do not match the query's declared ones."""


def _text(name: str) -> str:
    path = resources.files("circuitbase.cypher").joinpath(f"{name}.cypher")
    if name in NOT_QUERIES or not re.fullmatch(r"\w+", name) or not path.is_file():
        raise QueryError(f"no Cypher query named {name!r}; known: {', '.join(query_names())}")
    return path.read_text()


def query_names() -> list[str]:
    """Names of the library's queries (the `.cypher` files except the schema), sorted."""
    files = resources.files("circuitbase.cypher").iterdir()
    names = (f.name.removesuffix(".cypher") for f in files if f.name.endswith(".cypher"))
    return sorted(n for n in names if n not in NOT_QUERIES)


@cache
def load_query(name: str) -> str:
    """The Cypher text of query `name` without its comment lines."""
    lines = _text(name).splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("//")).strip()


@cache
def query_params(name: str) -> dict[str, str]:
    """The parameters query `name` declares, mapped to their example values (as written in the file)."""
    out: dict[str, str] = {}
    for line in _text(name).splitlines():
        if match := _PARAM.match(line.strip()):
            out[match.group(1)] = line.split("=>", 1)[1].strip()
    return out


def run_query(
    driver: neo4j.Driver, name: str, *, database: str = "neo4j", **params: Any
) -> list[dict[str, Any]]:
    """Run query `name` with exactly its declared parameters; returns the rows as dicts (read access)."""
    declared = set(query_params(name))
    missing, unknown = declared - set(params), set(params) - declared
    if missing or unknown:
        raise QueryError(
            f"query {name!r} takes parameters {sorted(declared)}; "
            f"missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    records, _, _ = driver.execute_query(
        load_query(name), params, database_=database, routing_=neo4j.RoutingControl.READ
    )
    return [record.data() for record in records]
