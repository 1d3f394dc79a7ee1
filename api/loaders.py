"""Per-request DataLoaders: every nested field reads through one batched query per level (no N+1).

A loader collects the keys its resolvers ask for during one tick of the event loop and answers them with
one repository call, run on a worker thread (the Neo4j driver is synchronous). Loaders whose keys carry
parameters (pruning levels, limits) group the keys by those parameters: one query per distinct setting.
The loaders of expensive aggregates (a feature's graphs and neighbours) and of what the graph page reads
besides its view (the graph, its subcircuits and similar graphs) go through the server's result cache
(`circuitbase.api.cache`): only the keys it misses are queried, still in one batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from functools import partial
from typing import Any

from anyio import to_thread
from strawberry.dataloader import DataLoader

from circuitbase.api.repository import Repository

Compute = Callable[[list[Hashable]], dict[Hashable, Any]]
Fetch = Callable[[Sequence[Hashable], Compute], Awaitable[list[Any]]]


async def uncached(keys: Sequence[Hashable], compute: Compute) -> list[Any]:
    """The `Fetch` without a cache: `compute(keys)` on a worker thread, in key order."""
    found = await to_thread.run_sync(compute, list(keys))
    return [found[k] for k in keys]


def _by_key(
    fn: Callable[[Sequence[Any]], dict[Any, Any]],
    default: Any = None,
    *,
    name: str = "",
    fetch: Fetch = uncached,
) -> DataLoader:
    """Keys looked up by one `fn(keys)` call (`default` for a key it does not return), made through
    `fetch` (default `uncached`) as entries (`name`, key)."""

    def call(entries: list[Any]) -> dict[Hashable, Any]:
        found = fn([entry[1] for entry in entries])
        return {entry: found.get(entry[1], default) for entry in entries}

    async def load(keys: list[Any]) -> list[Any]:
        return await fetch([(name, key) for key in keys], call)

    return DataLoader(load_fn=load)


def _lists(call: Callable[[list[Hashable]], dict[Hashable, list]], entries: list[tuple]) -> dict[tuple, list]:
    """The lists of (loader name, key, *params) `entries` from one `call(keys)`; a key without rows: []."""
    rows = call([entry[1] for entry in entries])
    return {entry: rows.get(entry[1], []) for entry in entries}


def _grouped(
    fn: Callable[..., dict[Any, Any]], names: Sequence[str], *, name: str, fetch: Fetch = uncached
) -> DataLoader:
    """Keys are (key, *params) with params named `names`; one `fn(keys, **params)` call per setting, made
    through `fetch` (default `uncached`) as entries (`name`, key, *params)."""

    async def load(keys: list[tuple]) -> list[Any]:
        groups: dict[tuple, list[tuple]] = defaultdict(list)
        for key in keys:
            groups[key[1:]].append(key)
        found: dict[tuple, Any] = {}
        for params, group in groups.items():
            call = partial(fn, **dict(zip(names, params, strict=True)))
            lists = await fetch([(name, *key) for key in group], partial(_lists, call))
            found.update(zip(group, lists, strict=True))
        return [found[k] for k in keys]

    return DataLoader(load_fn=load)


def _library(repo: Repository, name: str, key_param: str) -> Callable[..., dict[str, list[dict]]]:
    """A batched lookup over library query `name`: key -> its rows (see Repository.library_batch)."""

    def fn(keys: Sequence[str], **params: Any) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = defaultdict(list)
        for row in repo.library_batch(name, key_param, keys, **params):
            out[row.pop("_key")].append(row)
        return out

    return fn


class Loaders:
    """The loaders of one request; `cached` fetches through the server's result cache for this request."""

    def __init__(self, repo: Repository, *, cached: Fetch = uncached) -> None:
        self.graph = _by_key(repo.graphs_by_id, name="graph", fetch=cached)
        self.prompt = _by_key(repo.prompts_by_id)
        self.feature = _by_key(repo.features_by_key)
        self.token = _by_key(repo.tokens_by_key)
        self.ref = _by_key(repo.refs_by_key)  # a Feature or Token key, for words (circuitbase.api.words)
        self.subcircuit = _by_key(repo.subcircuits_by_key)
        self.graphs_of_prompt = _by_key(repo.graphs_of_prompts, default=[])
        self.subcircuits_of_graph = _by_key(
            repo.subcircuits_of_graphs, default=[], name="subcircuits_of_graph", fetch=cached
        )
        self.member_nodes = _by_key(repo.member_nodes, default=[], name="member_nodes", fetch=cached)
        self.supernodes_of = _by_key(repo.supernodes_of, default=[])
        self.members = _by_key(repo.supernode_members, default=[])
        self.nodes = _grouped(repo.graph_nodes, ("min_influence",), name="nodes")
        self.edges = _grouped(repo.graph_edges, ("min_influence", "min_abs_weight", "top_k"), name="edges")
        self.occurrences = _grouped(repo.occurrences, ("limit",), name="occurrences")
        self.feature_graphs = _grouped(
            _library(repo, "feature_graphs", "feature_key"),
            ("min_influence", "limit"),
            name="feature_graphs",
            fetch=cached,
        )
        self.neighbours = _grouped(
            _library(repo, "feature_neighbourhood", "feature_key"),
            ("min_graphs", "limit"),
            name="neighbours",
            fetch=cached,
        )
        self.feature_subcircuits = _grouped(
            _library(repo, "feature_subcircuits", "feature_key"), ("limit",), name="feature_subcircuits"
        )
        self.similar = _grouped(
            _library(repo, "similar_graphs", "graph_id"), ("limit",), name="similar", fetch=cached
        )
