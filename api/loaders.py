"""Per-request DataLoaders: every nested field reads through one batched query per level (no N+1).

A loader collects the keys its resolvers ask for during one tick of the event loop and answers them with
one repository call, run on a worker thread (the Neo4j driver is synchronous). Loaders whose keys carry
parameters (pruning levels, limits) group the keys by those parameters: one query per distinct setting.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Any

from anyio import to_thread
from strawberry.dataloader import DataLoader

from circuitbase.api.repository import Repository


def _by_key(fn: Callable[[Sequence[Any]], dict[Any, Any]], default: Any = None) -> DataLoader:
    async def load(keys: list[Any]) -> list[Any]:
        found = await to_thread.run_sync(fn, keys)
        return [found.get(k, default) for k in keys]

    return DataLoader(load_fn=load)


def _grouped(fn: Callable[..., dict[Any, Any]], names: Sequence[str]) -> DataLoader:
    """Keys are (key, *params) with params named `names`; one `fn(keys, **params)` call per setting."""

    async def load(keys: list[tuple]) -> list[Any]:
        groups: dict[tuple, list[Hashable]] = defaultdict(list)
        for key, *params in keys:
            groups[tuple(params)].append(key)
        found: dict[tuple, Any] = {}
        for params, group in groups.items():
            rows = await to_thread.run_sync(partial(fn, group, **dict(zip(names, params, strict=True))))
            found.update({(k, *params): rows.get(k, []) for k in group})
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
    """The loaders of one request."""

    def __init__(self, repo: Repository) -> None:
        self.graph = _by_key(repo.graphs_by_id)
        self.prompt = _by_key(repo.prompts_by_id)
        self.feature = _by_key(repo.features_by_key)
        self.token = _by_key(repo.tokens_by_key)
        self.subcircuit = _by_key(repo.subcircuits_by_key)
        self.graphs_of_prompt = _by_key(repo.graphs_of_prompts, default=[])
        self.subcircuits_of_graph = _by_key(repo.subcircuits_of_graphs, default=[])
        self.supernodes_of = _by_key(repo.supernodes_of, default=[])
        self.members = _by_key(repo.supernode_members, default=[])
        self.nodes = _grouped(repo.graph_nodes, ("min_influence",))
        self.edges = _grouped(repo.graph_edges, ("min_influence", "min_abs_weight", "top_k"))
        self.occurrences = _grouped(repo.occurrences, ("limit",))
        self.feature_graphs = _grouped(
            _library(repo, "feature_graphs", "feature_key"), ("min_influence", "limit")
        )
        self.neighbours = _grouped(
            _library(repo, "feature_neighbourhood", "feature_key"), ("min_graphs", "limit")
        )
        self.similar = _grouped(_library(repo, "similar_graphs", "graph_id"), ("limit",))
