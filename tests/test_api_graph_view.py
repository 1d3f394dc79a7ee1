"""The graph page's view (`GraphView.compact`) against the real Neo4j server: the same nodes, words and
edges as the nested GraphQL fields, from one query, served from the result cache until a write (a graph
loaded, an ingest job's labels, a label or supernode set through the API) changes what it shows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Hashable, Iterator
from typing import Any

import neo4j
import pytest
from fastapi.testclient import TestClient

from circuitbase.analysis.synthetic import synthetic_graph
from circuitbase.api.app import create_app
from circuitbase.api.auth import create_key
from circuitbase.api.cache import ResultCache
from circuitbase.ingest.jobs import JobRecord
from circuitbase.ingest.model import graph_id
from circuitbase.ingest.writer import write_graph
from tests.api_data import SYNTHETIC, TEXTS
from tests.planted_labels import LABEL, LABELLED, LENS_ONLY, planted_key, write_planted_labels
from tests.test_api import CountingDriver, data

pytest_plugins = ["tests.api_data"]  # the graph_files and store fixtures

VIEW = """query($id: ID!, $i: Float!, $w: Float!, $k: Int!) { graph(id: $id) {
    view(minInfluence: $i, minAbsWeight: $w, topK: $k) { compact } } }"""
BOTH = """query($id: ID!, $i: Float!, $w: Float!, $k: Int!) { graph(id: $id) { prompt { tokens }
    view(minInfluence: $i, minAbsWeight: $w, topK: $k) {
      compact
      nodes { node kind layer position featureIndex influence activation probability text
              feature { key label description supernodes { key name algorithm } } token { text } }
      edges { source target weight } } } }"""
LEVELS = ({"i": 0.0, "w": 0.0, "k": 1000}, {"i": 0.01, "w": 0.05, "k": 10})
WATCHED = {"i": 0.0, "w": 0.0, "k": 500}  # the level the cache test reads (no other test asks for it)
PLANTED_GRAPH = graph_id("synthetic-set", "synthetic-0-0")  # keeps the planted capitals circuit


@pytest.fixture(scope="module")
def labelled(store: neo4j.Driver) -> neo4j.Driver:
    """The API test data with the planted capitals circuit labelled (a label and contexts; lens tokens)."""
    write_planted_labels(store)
    return store


@pytest.fixture(scope="module")
def counting(labelled: neo4j.Driver) -> CountingDriver:
    return CountingDriver(labelled)


@pytest.fixture(scope="module")
def client(counting: CountingDriver) -> Iterator[TestClient]:
    with TestClient(create_app(driver=counting)) as client:  # type: ignore[arg-type]
        yield client


@pytest.fixture(scope="module")
def api_key(labelled: neo4j.Driver) -> str:
    return create_key(labelled, name="graph-view-tests")[1]


def unpacked(compact: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """The compact view as nested-field nodes and edges (what the dashboard's unpackView makes)."""
    f, v, e = compact["features"], compact["nodes"], compact["edges"]
    supernodes: list[list[dict]] = [[] for _ in f["key"]]
    for s in compact["supernodes"]:
        for i in s["features"]:
            supernodes[i].append({"key": s["key"], "name": s["name"], "algorithm": "manual"})
    features = [
        {"key": key, "label": f["label"][i], "description": f["description"][i], "supernodes": supernodes[i]}
        for i, key in enumerate(f["key"])
    ]
    fields = ("node", "kind", "layer", "position", "featureIndex", "influence", "activation", "probability")
    nodes = [
        {
            **{name: v[name][i] for name in (*fields, "text")},
            "feature": None if v["feature"][i] is None else features[v["feature"][i]],
            "token": {"text": v["token"][i]} if v["kind"][i] in ("TOKEN", "LOGIT") else None,
        }
        for i in range(len(v["node"]))
    ]
    edges = [
        {"source": v["node"][s], "target": v["node"][t], "weight": w}
        for s, t, w in zip(e["source"], e["target"], e["weight"], strict=True)
    ]
    return nodes, edges


def drawn(view: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """The nested fields' nodes and edges as the compact view has them: features with their manual
    supernodes only."""
    nodes = []
    for n in view["nodes"]:
        feature = n["feature"] and {
            **n["feature"],
            "supernodes": [s for s in n["feature"]["supernodes"] if s["algorithm"] == "manual"],
        }
        nodes.append({**n, "feature": feature})
    return nodes, view["edges"]


def compact(client: TestClient, graph: str, level: dict[str, Any]) -> dict[str, Any]:
    """A graph's compact view at `level`, parsed."""
    return json.loads(data(client, VIEW, id=graph, **level)["graph"]["view"]["compact"])


def sent(client: TestClient, counting: CountingDriver, graph: str) -> tuple[dict, int]:
    """A graph's view at the WATCHED level, and how many queries answering it sent to Neo4j."""
    before = counting.queries
    out = compact(client, graph, WATCHED)
    return out, counting.queries - before


def fresh(store: neo4j.Driver, graph: str) -> dict:
    """A graph's view at the WATCHED level from a new server (empty cache)."""
    with TestClient(create_app(driver=store)) as other:
        return compact(other, graph, WATCHED)


def words_of(view: dict[str, Any], feature: str) -> tuple[str | None, list[str]]:
    """A feature's label and the texts of its nodes in a compact view."""
    f, v = view["features"], view["nodes"]
    i = f["key"].index(feature)
    return f["label"][i], [t for t, j in zip(v["text"], v["feature"], strict=True) if j == i]


@pytest.mark.neo4j
def test_compact_view_equals_the_nested_fields(
    client: TestClient, api_key: str, labelled: neo4j.Driver
) -> None:
    members = [planted_key(f) for f in SYNTHETIC.circuits[0].features]
    define = 'mutation($f: [ID!]!) { defineSupernode(name: "capitals", features: $f) { key } }'
    data(client, define, api_key, f=members)
    graphs = [graph_id("fixtures/plt-relu", f"p{i}") for i in range(len(TEXTS))]
    graphs += [graph_id("synthetic-set", f"synthetic-0-{i}") for i in range(3)]
    for graph in graphs:
        for level in LEVELS:
            found = data(client, BOTH, id=graph, **level)["graph"]
            view = found["view"]
            assert unpacked(json.loads(view["compact"])) == drawn(view)
            assert json.loads(view["compact"])["tokens"] == found["prompt"]["tokens"]
    full = unpacked(compact(client, PLANTED_GRAPH, LEVELS[0]))
    pruned = unpacked(compact(client, PLANTED_GRAPH, LEVELS[1]))
    assert len(pruned[0]) < len(full[0]) and len(pruned[1]) == 10 < len(full[1])
    # the words are on the data: a label with contexts, a feature without a label, the manual supernode
    label, texts = words_of(compact(client, PLANTED_GRAPH, LEVELS[0]), planted_key(LABELLED))
    assert label == LABEL and texts and all(f"“{LABEL}”" in t for t in texts)
    labelled_nodes = [n for n in full[0] if n["feature"] and n["feature"]["key"] == planted_key(LABELLED)]
    assert labelled_nodes[0]["feature"]["supernodes"] == [
        {"key": "manual-capitals", "name": "capitals", "algorithm": "manual"}
    ]
    assert {n["kind"] for n in full[0]} == {"FEATURE", "ERROR", "TOKEN", "LOGIT"}


@pytest.mark.neo4j
def test_cached_until_a_write_changes_what_it_shows(
    client: TestClient, counting: CountingDriver, api_key: str, labelled: neo4j.Driver
) -> None:
    first, n = sent(client, counting, PLANTED_GRAPH)
    assert first == fresh(labelled, PLANTED_GRAPH)
    again, m = sent(client, counting, PLANTED_GRAPH)
    assert again == first and m == 1 < n  # the state token only: the graph's row and view are cached

    # a label set through the API
    key = planted_key(LENS_ONLY)
    mutation = 'mutation($k: ID!) { labelFeature(key: $k, label: "the capital") { key } }'
    data(client, mutation, api_key, k=key)
    relabelled, n = sent(client, counting, PLANTED_GRAPH)
    label, texts = words_of(relabelled, key)
    assert n > 1 and label == "the capital" and all("“the capital”" in t for t in texts)
    assert relabelled == fresh(labelled, PLANTED_GRAPH)

    # a supernode defined through the API
    define = 'mutation($f: [ID!]!) { defineSupernode(name: "pair", features: $f) { key } }'
    data(client, define, api_key, f=[key])
    grouped, n = sent(client, counting, PLANTED_GRAPH)
    i = grouped["features"]["key"].index(key)
    assert n > 1 and {"key": "manual-pair", "name": "pair", "features": [i]} in grouped["supernodes"]

    # labels an ingest job writes after its graphs: seen once the job has finished
    job = JobRecord(labelled).start({"test": "labels"})
    labelled.execute_query("MATCH (f:Feature {key: $k}) SET f.label = 'auto label'", k=key)
    assert sent(client, counting, PLANTED_GRAPH)[0] == grouped  # the job runs: the old state
    job.finish("finished")
    relabelled = sent(client, counting, PLANTED_GRAPH)[0]
    assert words_of(relabelled, key)[0] == "auto label" and relabelled == fresh(labelled, PLANTED_GRAPH)

    # a graph loaded
    other = graph_id("synthetic-set", f"synthetic-0-{SYNTHETIC.n_graphs}")
    write_graph(labelled, synthetic_graph(SYNTHETIC.n_graphs, config=SYNTHETIC))
    assert sent(client, counting, other)[0] == fresh(labelled, other)
    assert sent(client, counting, PLANTED_GRAPH)[1] > 1


def test_the_cache_keeps_entries_up_to_a_total_size() -> None:
    calls: list[Hashable] = []

    def compute(key: int) -> list[int]:
        calls.append(key)
        return [key] * 4  # size 4 each: the cache of size 10 keeps two

    async def run() -> list[list[int]]:
        cache = ResultCache(max_size=10)
        get = [cache.get(k, lambda k=k: compute(k), state="s", size=len) for k in (1, 2, 3, 3, 2, 1)]
        return [await g for g in get]

    assert asyncio.run(run()) == [[k] * 4 for k in (1, 2, 3, 3, 2, 1)]
    assert calls == [1, 2, 3, 1]  # 3 and 2 were kept; 1, the least recently used, was dropped
