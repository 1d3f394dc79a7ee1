"""Nodes and subcircuits in words through the GraphQL API, on the API test data with the planted capitals
circuit labelled (tests/planted_labels.py): token text, labels or logit-lens tokens, layer and position."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import neo4j
import pytest
from fastapi.testclient import TestClient

from circuitbase.analysis.synthetic import synthetic_graph
from circuitbase.api.app import ApiConfig, create_app
from circuitbase.engine.graph import AttributionGraph
from circuitbase.ingest.model import GraphRows, graph_id
from tests.api_data import SYNTHETIC
from tests.planted_labels import CAPITALS, LABELLED, LENS_ONLY, planted_key, write_planted_labels

pytest_plugins = ["tests.api_data"]  # the graph_files and store fixtures
pytestmark = pytest.mark.neo4j

# the planted features in words (tests/planted_labels.py): a label; else the top three logit-lens tokens
LABELLED_WORDS = "L0 #7 “capital city”"
LENS_WORDS = 'L2 #11 (promotes "tok2", " Paris", "tok9")'
PLANTED_SENTENCE = f'"tok1" → {LABELLED_WORDS} → {LENS_WORDS} → logit "tok2"'


@pytest.fixture(scope="module")
def client(store: neo4j.Driver) -> Iterator[TestClient]:
    write_planted_labels(store)
    with TestClient(create_app(config=ApiConfig(), driver=store)) as client:
        yield client


def data(client: TestClient, query: str, **variables: object) -> dict:
    body = client.post("/graphql", json={"query": query, "variables": variables}).json()
    assert "errors" not in body, body
    return body["data"]


def expected_words(rows: GraphRows) -> dict[str, str]:
    """Each node of a synthetic graph in words, from its rows (synthetic token ids read 'tok<id>')."""
    props = {kind: [r["props"] for r in found] for kind, found in rows.nodes.items()}
    inputs = {p["position"]: f'"tok{p["token_id"]}"' for p in props["TokenNode"]}
    planted = {LABELLED: LABELLED_WORDS, LENS_ONLY: LENS_WORDS}
    out = {p["node"]: f"{inputs[p['position']]} @{p['position']}" for p in props["TokenNode"]}
    out |= {p["node"]: f'logit "tok{p["token_id"]}"' for p in props["LogitNode"]}
    out |= {
        p["node"]: f"error L{p['layer']} @{p['position']} {inputs[p['position']]}" for p in props["ErrorNode"]
    }
    for p in props["FeatureNode"]:
        words = planted.get((p["layer"], p["feature"]), f"L{p['layer']} #{p['feature']}")
        out[p["node"]] = f"{words} @{p['position']} {inputs[p['position']]}"
    return out


def test_features_read_as_their_label_else_their_logit_lens_tokens(client: TestClient) -> None:
    query = "query($k: ID!) { feature(key: $k) { description label } }"
    assert data(client, query, k=planted_key(LABELLED))["feature"] == {
        "description": LABELLED_WORDS,
        "label": "capital city",
    }
    assert data(client, query, k=planted_key(LENS_ONLY))["feature"]["description"] == LENS_WORDS
    unlabelled = planted_key(SYNTHETIC.circuits[1].features[0])
    assert data(client, query, k=unlabelled)["feature"] == {"description": "L1 #5", "label": None}


def test_graph_nodes_read_as_words_with_their_place(client: TestClient) -> None:
    i = next(
        i for i in range(0, SYNTHETIC.n_graphs, 2) if synthetic_graph(i, config=SYNTHETIC).graph["correct"]
    )
    rows = synthetic_graph(i, config=SYNTHETIC)
    query = """query($id: ID!) { graph(id: $id) { view(minInfluence: -1) { nodes { node text } } } }"""
    nodes = data(client, query, id=rows.id)["graph"]["view"]["nodes"]
    expected = expected_words(rows)
    assert {n["node"]: n["text"] for n in nodes} == expected
    last = SYNTHETIC.n_positions - 1
    assert expected[f"0_7_{last}"] == f'{LABELLED_WORDS} @{last} "tok1"'  # the words, not a made-up check


def test_tiny_model_token_nodes_read_as_the_prompts_tokens(
    client: TestClient, graph_files: list[Path]
) -> None:
    graph = AttributionGraph.load(graph_files[0])
    query = """query($id: ID!) { graph(id: $id) { view(minInfluence: -1) {
        nodes { kind position text feature { layer index } } } } }"""
    gid = graph_id(graph.transcoder_name, graph.prompt_meta["id"])
    nodes = data(client, query, id=gid)["graph"]["view"]["nodes"]
    tokens = {n["position"]: n for n in nodes if n["kind"] == "TOKEN"}
    assert tokens
    for position, n in tokens.items():
        assert n["text"] == f"{json.dumps(graph.input_tokens[position], ensure_ascii=False)} @{position}"
    for n in nodes:
        if n["kind"] == "FEATURE":
            at = tokens[n["position"]]["text"].rsplit(" @", 1)[0]
            assert n["text"] == f"L{n['feature']['layer']} #{n['feature']['index']} @{n['position']} {at}"


def test_subcircuits_read_as_sentences(client: TestClient) -> None:
    query = """{ subcircuits(first: 50) { edges { node { sentence full: sentence(maxPaths: 1000)
        edges { source target sourceText targetText } } } } }"""
    found = [e["node"] for e in data(client, query)["subcircuits"]["edges"]]
    assert found
    for s in found:
        assert "synthetic-set/" not in s["full"] and "synthetic/" not in s["full"]
        for e in s["edges"]:  # every edge appears in the full sentence as its two ends in words
            assert f"{e['sourceText']} → {e['targetText']}" in s["full"]
        paths = s["full"].split("; ")
        short = paths if len(paths) <= 5 else [*paths[:5], f"… (+{len(paths) - 5} more paths)"]
        assert s["sentence"] == "; ".join(short)
    assert any(len(s["full"].split("; ")) > 5 for s in found)  # a large one is cut short
    planted = set(CAPITALS.edges())
    full = [s for s in found if {(e["source"], e["target"]) for e in s["edges"]} == planted]
    assert [s["sentence"] for s in full] == [PLANTED_SENTENCE]
    body = client.post(
        "/graphql", json={"query": "{ subcircuits { edges { node { sentence(maxPaths: 0) } } } }"}
    )
    assert {e["extensions"]["code"] for e in body.json()["errors"]} == {"BAD_USER_INPUT"}


def test_neighbours_read_as_words(client: TestClient) -> None:
    query = "query($k: ID!) { feature(key: $k) { neighbours(limit: 50) { direction key text } } }"
    out = data(client, query, k=planted_key(LENS_ONLY))["feature"]["neighbours"]
    by_key = {(n["direction"], n["key"]): n["text"] for n in out}
    assert by_key[("in", planted_key(LABELLED))] == LABELLED_WORDS
    assert by_key[("out", f"synthetic/{CAPITALS.answer}")] == 'logit "tok2"'
