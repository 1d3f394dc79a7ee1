"""Parsing and validation of GraphQL operations, with what depends on the query text alone cached.

1. A query text is parsed once (`maxsize` texts kept, least recently used dropped first); a syntax error
   is left to strawberry's own parse, which reports it as usual.
2. `rules` (the GraphQL spec's and the depth limit) see only the document: their errors are kept per
   document, so a dashboard's repeated query is validated once.
3. `checks` depend on the request too (the complexity limit reads the variables, the access check the
   caller): they run on every request, as plain functions of the document (no visitor pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from functools import lru_cache

from graphql import ASTValidationRule, DocumentNode, GraphQLError, GraphQLSchema, parse
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document
from strawberry.types import ExecutionContext

Check = Callable[[ExecutionContext, DocumentNode], list[GraphQLError]]


def cached_preparation(
    *, rules: Sequence[type[ASTValidationRule]], checks: Sequence[Check], maxsize: int = 256
) -> Callable[[], SchemaExtension]:
    """A schema extension factory parsing and validating as the module docstring says (`maxsize` default
    256)."""
    cached_rules = tuple(rules)
    parsed = lru_cache(maxsize=maxsize)(parse)

    @lru_cache(maxsize=maxsize)
    def validated(schema: GraphQLSchema, document: DocumentNode) -> tuple[GraphQLError, ...]:
        return tuple(validate_document(schema, document, cached_rules))

    class CachedPreparation(SchemaExtension):
        def on_parse(self) -> Iterator[None]:
            context = self.execution_context
            if context.query is not None:
                with suppress(GraphQLError):
                    context.graphql_document = parsed(context.query, **context.parse_options)
            yield

        def on_validate(self) -> Iterator[None]:
            context = self.execution_context
            document = context.graphql_document
            assert document is not None  # validation follows a successful parse
            errors = list(validated(context.schema._schema, document))
            for check in checks:
                errors += check(context, document)
            context.pre_execution_errors = errors
            yield

    return CachedPreparation
