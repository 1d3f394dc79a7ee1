"""How much one request may ask for: depth, complexity, page sizes, edges per graph and time; and how
often the server runs a model for interventions (`RateLimiter`).

Complexity of an operation (checked before execution, with the request's variables):
1. A leaf field costs 0; a field with a selection costs 1 plus its children's cost, times its list size.
2. The list size is the field's `first`, `limit` or `topK` argument (literal or variable), else 1.
3. Fragments count where they are spread. An operation above `max_complexity` is refused
   (QUERY_TOO_COMPLEX) before any resolver runs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

from circuitbase.api.errors import BAD_USER_INPUT, QUERY_TOO_COMPLEX, RATE_LIMITED, ApiError

SIZE_ARGUMENTS = ("first", "limit", "topK")


@dataclass(frozen=True)
class Limits:
    """max_depth: deepest selection (default 12). max_complexity: see the module docstring (default
    200,000). max_page_size: largest `first`/`limit` of a list (default 100). max_edges: most edges of one
    graph view (`topK`, default 50,000). query_timeout_s: Neo4j transaction timeout per query (default 10).
    Interventions (they run the model): max_intervention_features features changed at once (default 32),
    max_intervention_tokens tokens of the prompt (default 128), interventions_per_minute model runs a
    minute on the server (default 60; cached answers are free) and max_interventions_waiting runs at once,
    running or waiting for the model (default 4)."""

    max_depth: int = 12
    max_complexity: int = 200_000
    max_page_size: int = 100
    max_edges: int = 50_000
    query_timeout_s: float = 10.0
    max_intervention_features: int = 32
    max_intervention_tokens: int = 128
    interventions_per_minute: int = 60
    max_interventions_waiting: int = 4


def page_size(first: int, *, limits: Limits, name: str = "first") -> int:
    """`first` if it is within 1..max_page_size, else BAD_USER_INPUT."""
    if not 1 <= first <= limits.max_page_size:
        raise ApiError(BAD_USER_INPUT, f"{name} must be between 1 and {limits.max_page_size}, got {first}")
    return first


class RateLimiter:
    """At most `per_minute` starts in any 60 seconds and `max_waiting` at once (running or waiting); a
    start past either bound is refused with RATE_LIMITED. Thread-safe; `clock` (default
    `time.monotonic`) gives seconds."""

    def __init__(
        self, *, per_minute: int, max_waiting: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_minute, self.max_waiting, self.clock = per_minute, max_waiting, clock
        self._starts: deque[float] = deque()
        self._running = 0
        self._lock = threading.Lock()

    @contextmanager
    def take(self, what: str) -> Iterator[None]:
        """Hold one start of `what` (named in the refusal) for the duration of the block."""
        with self._lock:
            now = self.clock()
            while self._starts and self._starts[0] <= now - 60.0:
                self._starts.popleft()
            if len(self._starts) >= self.per_minute:
                wait = 60.0 - (now - self._starts[0])
                raise ApiError(
                    RATE_LIMITED,
                    f"{what}: this server runs at most {self.per_minute} a minute; try again in {wait:.0f} s",
                )
            if self._running >= self.max_waiting:
                raise ApiError(
                    RATE_LIMITED,
                    f"{what}: {self._running} already running or waiting on this server; try again shortly",
                )
            self._starts.append(now)
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1


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
