"""GraphQL errors with a machine-readable `extensions.code`, and the extension that assigns and masks them.

1. Resolvers raise `ApiError(code, message)`; its code travels in the error's extensions.
2. After each operation `ErrorCodes` gives every error a code: parse and validation errors (including the
   depth, complexity and access rules, which set their own) and bad variables keep or get theirs; a Neo4j
   transaction timeout becomes TIMEOUT.
3. Any other exception is unexpected: it is logged with its traceback and replaced by "internal error"
   (code INTERNAL_SERVER_ERROR), so no internal detail reaches the client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import neo4j.exceptions
from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

log = logging.getLogger("circuitbase.api")

UNAUTHENTICATED = "UNAUTHENTICATED"
BAD_USER_INPUT = "BAD_USER_INPUT"
NOT_FOUND = "NOT_FOUND"
QUERY_TOO_DEEP = "QUERY_TOO_DEEP"
QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
TIMEOUT = "TIMEOUT"
RATE_LIMITED = "RATE_LIMITED"
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
INTERNAL = "INTERNAL_SERVER_ERROR"

_TIMEOUT_CODES = ("Neo.ClientError.Transaction.TransactionTimedOut",)


class ApiError(GraphQLError):
    """An expected failure, reported to the client as is: `code` goes to `extensions.code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, extensions={"code": code})
        self.code = code


def _code_of(error: GraphQLError) -> tuple[str, GraphQLError | None]:
    """The code for `error`, and a replacement error when the original must not be shown."""
    original = error.original_error
    if error.message.startswith("Variable '$"):
        return BAD_USER_INPUT, None
    if original is None:
        if error.extensions and "code" in error.extensions:
            return error.extensions["code"], None
        if error.message.startswith("Syntax Error"):
            return PARSE_FAILED, None
        if "exceeds maximum operation depth" in error.message:
            return QUERY_TOO_DEEP, None
        return VALIDATION_FAILED, None
    if isinstance(original, ApiError):
        return original.code, None
    if isinstance(original, GraphQLError) and original.extensions and "code" in original.extensions:
        return original.extensions["code"], None
    if isinstance(original, neo4j.exceptions.Neo4jError) and str(original.code).startswith(_TIMEOUT_CODES):
        message = (
            "the query took longer than the server's time limit; "
            "ask for less (smaller pages, stricter pruning)"
        )
        return TIMEOUT, GraphQLError(message, error.nodes, path=error.path)
    log.error("unexpected error in %s", error.path, exc_info=original)
    return INTERNAL, GraphQLError("internal error", error.nodes, path=error.path)


def with_code(error: GraphQLError) -> GraphQLError:
    """`error` (or its masked replacement) with `extensions.code` set."""
    code, replacement = _code_of(error)
    out = replacement or error
    out.extensions = {**(out.extensions or {}), "code": code}
    return out


class ErrorCodes(SchemaExtension):
    """Set `extensions.code` on every error of the result and mask unexpected ones (module docstring)."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is not None and result.errors:
            result.errors = [with_code(error) for error in result.errors]
