"""How much one request may ask for: depth, complexity, page sizes, edges per graph and time.

Complexity of an operation (checked before execution, with the request's variables):
1. A leaf field costs 0; a field with a selection costs 1 plus its children's cost, times its list size.
2. The list size is the field's `first`, `limit` or `topK` argument (literal or variable), else 1.
3. Fragments count where they are spread. An operation above `max_complexity` is refused
   (QUERY_TOO_COMPLEX) before any resolver runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)

from circuitbase.api.errors import BAD_USER_INPUT, QUERY_TOO_COMPLEX, ApiError

SIZE_ARGUMENTS = ("first", "limit", "topK")


@dataclass(frozen=True)
class Limits:
    """max_depth: deepest selection (default 12). max_complexity: see the module docstring (default
    200,000). max_page_size: largest `first`/`limit` of a list (default 100). max_edges: most edges of one
    graph view (`topK`, default 50,000). query_timeout_s: Neo4j transaction timeout per query (default 10)."""

    max_depth: int = 12
    max_complexity: int = 200_000
    max_page_size: int = 100
    max_edges: int = 50_000
    query_timeout_s: float = 10.0


def page_size(first: int, *, limits: Limits, name: str = "first") -> int:
    """`first` if it is within 1..max_page_size, else BAD_USER_INPUT."""
    if not 1 <= first <= limits.max_page_size:
        raise ApiError(BAD_USER_INPUT, f"{name} must be between 1 and {limits.max_page_size}, got {first}")
    return first


def _size(field: FieldNode, variables: dict[str, Any]) -> int:
    for argument in field.arguments or ():
        if argument.name.value not in SIZE_ARGUMENTS:
            continue
        value = argument.value
        if isinstance(value, IntValueNode):
            return max(1, int(value.value))
        if isinstance(value, VariableNode) and isinstance(variables.get(value.name.value), int):
            return max(1, variables[value.name.value])
    return 1


def complexity(
    selection: SelectionSetNode | None,
    *,
    fragments: dict[str, FragmentDefinitionNode],
    variables: dict[str, Any],
    seen: frozenset[str] = frozenset(),
) -> int:
    """The cost of `selection` (module docstring); fragment cycles (invalid anyway) count once."""
    if selection is None:
        return 0
    total = 0
    for node in selection.selections:
        if isinstance(node, FieldNode):
            if node.selection_set is not None:
                inner = complexity(node.selection_set, fragments=fragments, variables=variables, seen=seen)
                total += (1 + inner) * _size(node, variables)
        elif isinstance(node, InlineFragmentNode):
            total += complexity(node.selection_set, fragments=fragments, variables=variables, seen=seen)
        elif isinstance(node, FragmentSpreadNode) and node.name.value not in seen:
            fragment = fragments.get(node.name.value)
            if fragment is not None:
                total += complexity(
                    fragment.selection_set,
                    fragments=fragments,
                    variables=variables,
                    seen=seen | {node.name.value},
                )
    return total


def complexity_errors(
    document: DocumentNode, *, max_complexity: int, variables: dict[str, Any]
) -> list[GraphQLError]:
    """QUERY_TOO_COMPLEX for each operation of `document` that costs more than `max_complexity`."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    errors = []
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        cost = complexity(definition.selection_set, fragments=fragments, variables=variables)
        if cost > max_complexity:
            errors.append(
                GraphQLError(
                    f"query complexity {cost:,} exceeds the limit of {max_complexity:,}; "
                    "ask for smaller pages (first/limit/topK) or fewer nested lists",
                    definition,
                    extensions={"code": QUERY_TOO_COMPLEX},
                )
            )
    return errors
