"""The graph page's API fields against the real Neo4j server: a view as circuit-tracer JSON (the engine's
Neuronpedia format, read back by the importer), a feature's subcircuits and its top contexts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import neo4j
import pytest
from fastapi.testclient import TestClient

from circuitbase.api.app import ApiConfig, create_app
from circuitbase.api.auth import create_key
from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.neuronpedia import to_neuronpedia
from circuitbase.ingest.model import graph_id
from circuitbase.ingest.neuronpedia_import import rows_from_neuronpedia
from tests.planted_labels import CONTEXTS, LABEL, LABELLED, planted_key, write_planted_labels

pytest_plugins = ["tests.api_data"]  # the graph_files and store fixtures
pytestmark = pytest.mark.neo4j

TINY_SET = "fixtures/plt-relu"
VIEW = """query($id: ID!, $i: Float!, $k: Int!, $nodes: [ID!], $pinned: [ID!], $clicked: ID) {
  graph(id: $id) { view(minInfluence: $i, topK: $k) {
    nodes { node kind influence feature { key } }
    edges { source target weight }
    circuitTracerJson(nodes: $nodes, pinnedIds: $pinned, clickedId: $clicked) } } }"""


@pytest.fixture(scope="module")
def client(store: neo4j.Driver) -> Iterator[TestClient]:
    write_planted_labels(store)
    with TestClient(create_app(config=ApiConfig(), driver=store)) as client:
        yield client


def post(client: TestClient, query: str, key: str | None = None, **variables: Any) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/graphql", json={"query": query, "variables": variables}, headers=headers).json()


def data(client: TestClient, query: str, key: str | None = None, **variables: Any) -> dict:
    body = post(client, query, key, **variables)
    assert "errors" not in body, body["errors"]
    return body["data"]


def view(
    client: TestClient, gid: str, *, min_influence: float = 0.0, top_k: int = 20_000, **args: Any
) -> dict:
    return data(client, VIEW, id=gid, i=min_influence, k=top_k, **args)["graph"]["view"]


def _links(doc: dict) -> list[tuple[str, str, float]]:
    return sorted((link["source"], link["target"], link["weight"]) for link in doc["links"])


def test_a_whole_view_is_the_engines_neuronpedia_json_of_the_graph(
    client: TestClient, graph_files: list[Path]
) -> None:
    path = next(p for p in graph_files if p.stem == "p0")
    expected = to_neuronpedia(AttributionGraph.load(path), slug="p0")
    doc = view(client, graph_id(TINY_SET, "p0"))["circuitTracerJson"]
    assert doc["nodes"] == expected["nodes"]
    assert _links(doc) == _links(expected) and 0 < len(doc["links"]) < 20_000  # every edge: none cut
    info = doc["metadata"].pop("info")
    assert doc["metadata"] == {k: v for k, v in expected["metadata"].items() if k != "info"}
    assert {k: info[k] for k in expected["metadata"]["info"]} == expected["metadata"]["info"]
    assert info["graph_id"] == graph_id(TINY_SET, "p0")
    assert doc["qParams"] == expected["qParams"]


def test_a_filtered_view_keeps_the_given_nodes_pins_and_supernodes(
    client: TestClient, store: neo4j.Driver, tmp_path: Path
) -> None:
    gid = graph_id(TINY_SET, "p1")
    full = view(client, gid, top_k=300)
    features = sorted((n for n in full["nodes"] if n["kind"] == "FEATURE"), key=lambda n: -n["influence"])
    others = [n["node"] for n in full["nodes"] if n["kind"] in ("TOKEN", "LOGIT")]
    shown = [n["node"] for n in features[:6]] + others
    pinned = [features[0]["node"], features[2]["node"]]
    grouped = [features[0], features[1], features[-1]]  # the last one is not shown: left out of the group
    key = create_key(store, name="circuit-tracer-tests")[1]
    define = 'mutation($f: [ID!]!) { defineSupernode(name: "top pair", features: $f) { key } }'
    data(client, define, key, f=[n["feature"]["key"] for n in grouped])

    out = view(client, gid, top_k=300, nodes=shown, pinned=pinned, clicked=pinned[1])
    doc = out["circuitTracerJson"]
    assert [n["node_id"] for n in doc["nodes"]] == [n["node"] for n in full["nodes"] if n["node"] in shown]
    assert doc["links"] == [e for e in out["edges"] if e["source"] in shown and e["target"] in shown]
    assert doc["links"]
    keys = {n["feature"]["key"] for n in grouped}
    members = [
        n["node"] for n in full["nodes"] if n["node"] in shown and (n["feature"] or {}).get("key") in keys
    ]
    assert doc["qParams"]["pinnedIds"] == pinned and doc["qParams"]["clickedId"] == pinned[1]
    assert len(members) >= 2 and doc["qParams"]["supernodes"] == [["top pair", *members]]

    file = tmp_path / "view.json"  # the circuit-tracer JSON importer reads it back as the same graph
    file.write_text(json.dumps(doc))
    rows = rows_from_neuronpedia(file)
    assert rows.graph["id"] == gid
    assert sorted(r["props"]["node"] for rs in rows.nodes.values() for r in rs) == sorted(shown)
    assert len(rows.edge_weight) == len(doc["links"])


def test_asking_for_nodes_outside_the_view_is_refused(client: TestClient) -> None:
    gid = graph_id(TINY_SET, "p1")
    nodes = [n["node"] for n in view(client, gid, top_k=10)["nodes"]]
    for args, message in (
        ({"nodes": [*nodes, "9_9_99"]}, "nodes not in this view: ['9_9_99']"),
        ({"nodes": nodes[:2], "pinned": [nodes[3]]}, f"not among the exported ones: ['{nodes[3]}']"),
        ({"nodes": nodes[:2], "clicked": nodes[4]}, f"not among the exported ones: ['{nodes[4]}']"),
    ):
        body = post(client, VIEW, id=gid, i=0.0, k=10, **args)
        assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
        assert message in body["errors"][0]["message"]


def test_a_feature_lists_its_subcircuits_and_top_contexts(client: TestClient) -> None:
    query = """{ subcircuits(first: 100) {
        edges { node { key rank edges { source target } } } pageInfo { hasNextPage } } }"""
    every = data(client, query)["subcircuits"]
    assert not every["pageInfo"]["hasNextPage"]
    subcircuits = [e["node"] for e in every["edges"]]
    key = planted_key(LABELLED)
    query = """query($k: ID!) { feature(key: $k) { label topContexts topActivations
        subcircuits(limit: 100) { key rank } } }"""
    feature = data(client, query, k=key)["feature"]
    expected = [
        {"key": s["key"], "rank": s["rank"]}
        for s in subcircuits
        if any(key in (e["source"], e["target"]) for e in s["edges"])
    ]
    assert expected and feature["subcircuits"] == expected
    assert feature["label"] == LABEL
    assert feature["topContexts"] == [c.render() for c in CONTEXTS]
    assert feature["topActivations"] == [c.act for c in CONTEXTS]
    limited = data(client, query.replace("limit: 100", "limit: 1"), k=key)["feature"]["subcircuits"]
    assert limited == expected[:1]
