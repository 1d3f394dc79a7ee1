"""API keys: created by the CLI, stored hashed in Neo4j as `(:ApiKey)`, required for mutations.

1. A key reads `cbk_<id>_<secret>`. Only `id`, a random per-key salt and HMAC-SHA256(salt, secret) are
   stored (`ApiKey {id, name, salt, hash, created, revoked}`); the secret is shown once, at creation.
2. A request presents the key as `Authorization: Bearer <key>` or `X-API-Key: <key>`; it is checked by
   id, then the HMAC is compared in constant time. Revoked keys fail.
3. `access_errors` (checked with validation) refuses mutations without a valid key and, when reads need
   a key, queries too (introspection alone stays open so GraphiQL and schema tools work).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

import neo4j
from graphql import DocumentNode, FieldNode, GraphQLError, OperationDefinitionNode, OperationType

from circuitbase.api.errors import UNAUTHENTICATED

READ_ACCESS = ("open", "key")
_KEY = re.compile(r"cbk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})")

_CONSTRAINT = "CREATE CONSTRAINT api_key_id IF NOT EXISTS FOR (k:ApiKey) REQUIRE k.id IS UNIQUE"
_CREATE = """
CREATE (k:ApiKey {id: $id, name: $name, salt: $salt, hash: $hash, created: datetime(), revoked: false})
"""
_GET = (
    "MATCH (k:ApiKey {id: $id}) RETURN k.salt AS salt, k.hash AS hash, k.revoked AS revoked, k.name AS name"
)
_LIST = """
MATCH (k:ApiKey)
RETURN k.id AS id, k.name AS name, toString(k.created) AS created, k.revoked AS revoked
ORDER BY k.created
"""
_REVOKE = "MATCH (k:ApiKey {id: $id}) SET k.revoked = true, k.revoked_at = datetime() RETURN k.id AS id"


class ApiKeyError(ValueError):
    """An API key that does not exist (revoking), or a bad key name."""


@dataclass(frozen=True)
class Caller:
    """Who is calling: `key_id`/`name` of a valid key, or None; `rejected` when a key was given but failed."""

    key_id: str | None = None
    name: str | None = None
    rejected: bool = False

    @property
    def authenticated(self) -> bool:
        return self.key_id is not None


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


def create_key(driver: neo4j.Driver, *, name: str, database: str = "neo4j") -> tuple[str, str]:
    """Store a new key named `name`; returns (id, the full key), the key's only appearance."""
    if not name.strip():
        raise ApiKeyError("an API key needs a non-empty name")
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    driver.execute_query(_CONSTRAINT, database_=database)
    driver.execute_query(
        _CREATE, id=key_id, name=name, salt=salt, hash=_digest(salt, secret), database_=database
    )
    return key_id, f"cbk_{key_id}_{secret}"


def list_keys(driver: neo4j.Driver, *, database: str = "neo4j") -> list[dict[str, Any]]:
    """Every key's id, name, creation time and revoked flag (never a secret or hash)."""
    records, _, _ = driver.execute_query(_LIST, database_=database)
    return [r.data() for r in records]


def revoke_key(driver: neo4j.Driver, key_id: str, *, database: str = "neo4j") -> None:
    """Mark key `key_id` revoked; ApiKeyError if there is none."""
    records, _, _ = driver.execute_query(_REVOKE, id=key_id, database_=database)
    if not records:
        raise ApiKeyError(f"no API key with id {key_id!r}")


def presented_key(headers: Any) -> str | None:
    """The key in `Authorization: Bearer ...` or `X-API-Key`, if any."""
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key")


def verify_key(driver: Any, key: str | None, *, database: str = "neo4j") -> Caller:
    """The caller a presented key identifies (module docstring, step 2)."""
    if key is None:
        return Caller()
    match = _KEY.fullmatch(key.strip())
    if match is None:
        return Caller(rejected=True)
    key_id, secret = match.groups()
    records, _, _ = driver.execute_query(
        _GET, {"id": key_id}, database_=database, routing_=neo4j.RoutingControl.READ
    )
    if not records or records[0]["revoked"]:
        return Caller(rejected=True)
    if not hmac.compare_digest(_digest(records[0]["salt"], secret), records[0]["hash"]):
        return Caller(rejected=True)
    return Caller(key_id=key_id, name=records[0]["name"])


def _introspection_only(operation: OperationDefinitionNode) -> bool:
    fields = [s for s in operation.selection_set.selections if isinstance(s, FieldNode)]
    return len(fields) == len(operation.selection_set.selections) and all(
        f.name.value.startswith("__") for f in fields
    )


def access_errors(document: DocumentNode, *, caller: Caller, read_access: str) -> list[GraphQLError]:
    """UNAUTHENTICATED for each operation of `document` that `caller` may not run (module docstring, 3)."""
    if caller.authenticated:
        return []
    errors = []
    for node in document.definitions:
        if not isinstance(node, OperationDefinitionNode):
            continue
        mutation = node.operation == OperationType.MUTATION
        if not mutation and (read_access == "open" or _introspection_only(node)):
            continue
        why = "the API key is invalid or revoked" if caller.rejected else "no API key was given"
        what = "mutations need" if mutation else "this server needs, for reads too,"
        errors.append(
            GraphQLError(
                f"{what} an API key (Authorization: Bearer <key>); {why}",
                node,
                extensions={"code": UNAUTHENTICATED},
            )
        )
    return errors
