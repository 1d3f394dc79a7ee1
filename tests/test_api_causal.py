"""Causal drops of subcircuit occurrences through the GraphQL API, on the toy demo's data: wherever a
subcircuit's occurrences are listed, causalDrop and causalLogitDrop are what the causal step stored on
OCCURS_IN (null once the subcircuits are mined again), memberNodes are the nodes that step ablated, and
ablating them with the `intervene` query takes away the stored drop of the answer's lead."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import neo4j
import pytest
import torch
from fastapi.testclient import TestClient

from circuitbase.analysis.causal import OCCURRENCE_FEATURES
from circuitbase.analysis.run import run_analysis
from circuitbase.api.app import ApiConfig, create_app
from circuitbase.settings import Neo4jSettings
from tests.numerics import assert_close

pytest_plugins = ["tests.toy_demo_data"]  # the toy_demo fixture
pytestmark = pytest.mark.neo4j

STORED = """
MATCH (s:Subcircuit)-[o:OCCURS_IN]->(g:Graph)
RETURN s.key AS subcircuit, g.id AS graph, o.causal_drop AS drop, o.causal_logit_drop AS logit_drop
"""
OCCURRENCES = """{ subcircuits(first: 100) { pageInfo { hasNextPage } edges { node {
  key causalSupport occurrences(limit: 100) { graphId causalDrop causalLogitDrop } } } } }"""
GRAPH_OCCURRENCES = """{ graphs(first: 100) { pageInfo { hasNextPage } edges { node {
  id subcircuits { subcircuit { key } causalDrop causalLogitDrop } } } } }"""
MEMBER_NODES = """{ subcircuits(first: 100) { edges { node { key occurrences(limit: 100) {
  graphId memberNodes { node layer position featureIndex featureKey } } } } } }"""
INTERVENE = """query($g: ID!, $f: [FeatureChangeInput!]!, $free: Boolean!) {
  intervene(graphId: $g, features: $f, freeAttention: $free, top: 5) {
    before { tokenId logit } after { tokenId logit } logitChanges { tokenId after } } }"""


@pytest.fixture(scope="module")
def client(toy_demo: neo4j.Driver) -> Iterator[TestClient]:
    """The API on the toy demo's data; interventions run the shipped toy model on the CPU."""
    with TestClient(create_app(config=ApiConfig(intervention_device="cpu"), driver=toy_demo)) as client:
        yield client


def data(client: TestClient, query: str, **variables: Any) -> dict:
    body = client.post("/graphql", json={"query": query, "variables": variables}).json()
    assert "errors" not in body, body
    return body["data"]


def stored(driver: neo4j.Driver) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """(causal_drop, causal_logit_drop) of every OCCURS_IN by (subcircuit key, graph id)."""
    return {
        (r["subcircuit"], r["graph"]): (r["drop"], r["logit_drop"])
        for r in driver.execute_query(STORED).records
    }


def listed(client: TestClient) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """(causalDrop, causalLogitDrop) of every occurrence as Subcircuit.occurrences lists it."""
    page = data(client, OCCURRENCES)["subcircuits"]
    assert not page["pageInfo"]["hasNextPage"]
    return {
        (e["node"]["key"], o["graphId"]): (o["causalDrop"], o["causalLogitDrop"])
        for e in page["edges"]
        for o in e["node"]["occurrences"]
    }


def listed_per_graph(client: TestClient) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """(causalDrop, causalLogitDrop) of every occurrence as Graph.subcircuits lists it."""
    graphs = data(client, GRAPH_OCCURRENCES)["graphs"]
    assert not graphs["pageInfo"]["hasNextPage"]
    return {
        (o["subcircuit"]["key"], e["node"]["id"]): (o["causalDrop"], o["causalLogitDrop"])
        for e in graphs["edges"]
        for o in e["node"]["subcircuits"]
    }


def test_occurrences_carry_the_drops_the_causal_step_stored(
    client: TestClient, toy_demo: neo4j.Driver
) -> None:
    expected = stored(toy_demo)
    drops = [drop for drop, _ in expected.values()]
    # every occurrence measured, answers both kept (drop < 1) and changed (drop > 1)
    assert None not in drops and min(drops) < 1.0 < max(drops)
    assert listed(client) == expected
    assert listed_per_graph(client) == expected

    # side by side: the two graphs sharing the most subcircuits, each column that graph's occurrence
    shared: dict[str, set[str]] = {}
    for subcircuit, graph in expected:
        shared.setdefault(graph, set()).add(subcircuit)
    a, b = sorted(shared, key=lambda g: -len(shared[g]))[:2]
    prompts = data(
        client,
        "query($a: ID!, $b: ID!) { a: graph(id: $a) { promptId } b: graph(id: $b) { promptId } }",
        a=a,
        b=b,
    )
    compared = data(
        client,
        """query($ids: [ID!]!) { comparePrompts(promptIds: $ids) { graphIds
             subcircuits(limit: 100) { key causalDrop causalLogitDrop } } }""",
        ids=[prompts["a"]["promptId"], prompts["b"]["promptId"]],
    )["comparePrompts"]
    assert compared["graphIds"] == [a, b] and compared["subcircuits"]
    for row in compared["subcircuits"]:
        columns = [expected.get((row["key"], g), (None, None)) for g in (a, b)]
        assert row["causalDrop"] == [drop for drop, _ in columns]
        assert row["causalLogitDrop"] == [logit for _, logit in columns]


def test_member_nodes_are_what_the_causal_step_ablated(client: TestClient, toy_demo: neo4j.Driver) -> None:
    edges = data(client, MEMBER_NODES)["subcircuits"]["edges"]
    shown = {
        (e["node"]["key"], o["graphId"]): o["memberNodes"] for e in edges for o in e["node"]["occurrences"]
    }
    graphs = sorted({graph for _, graph in shown})
    ablated = {
        (r["subcircuit"], r["graph"]): sorted(r["features"])
        for r in toy_demo.execute_query(OCCURRENCE_FEATURES, graphs=graphs).records
    }
    per_graph = data(
        client,
        """{ graphs(first: 100) { edges { node { id subcircuits {
             subcircuit { key } memberNodes { layer position featureIndex } } } } } }""",
    )["graphs"]["edges"]
    from_graphs = {
        (o["subcircuit"]["key"], e["node"]["id"]): o["memberNodes"]
        for e in per_graph
        for o in e["node"]["subcircuits"]
    }
    assert ablated.keys() == shown.keys() == from_graphs.keys()
    for occurrence, nodes in shown.items():
        triples = [[n["layer"], n["position"], n["featureIndex"]] for n in nodes]
        assert triples == ablated[occurrence]  # the same nodes, by layer, position and index
        assert from_graphs[occurrence] == [
            {k: n[k] for k in ("layer", "position", "featureIndex")} for n in nodes
        ]
        assert all(n["node"] == f"{n['layer']}_{n['featureIndex']}_{n['position']}" for n in nodes)
    members = {
        r["key"]: set(r["features"])
        for r in toy_demo.execute_query(
            "MATCH (s:Subcircuit)-[:HAS_MEMBER]->(f:Feature) RETURN s.key AS key, collect(f.key) AS features"
        ).records
    }
    assert all({n["featureKey"] for n in nodes} <= members[key] for (key, _), nodes in shown.items())
    assert max(len(nodes) for nodes in shown.values()) > 1


def _lead_drop(out: dict) -> tuple[float, float]:
    """The answer's (the top token before) lead drop in logits and as a share of its lead before, from an
    intervention's top tokens and logit changes (the best other token is among the top ones)."""
    answer = out["before"][0]["tokenId"]
    lead_before = out["before"][0]["logit"] - out["before"][1]["logit"]
    after = {c["tokenId"]: c["after"] for c in out["logitChanges"]}[answer]
    lead_after = after - max(t["logit"] for t in out["after"] if t["tokenId"] != answer)
    drop = lead_before - lead_after
    return drop, drop / lead_before


def test_ablating_the_member_nodes_takes_the_stored_drop(client: TestClient, toy_demo: neo4j.Driver) -> None:
    [run] = toy_demo.execute_query("MATCH (r:AnalysisRun {id: 'causal'}) RETURN r.params AS params").records
    free = not json.loads(run["params"])["freeze_attention"]
    edges = data(client, MEMBER_NODES)["subcircuits"]["edges"]
    nodes = {
        (e["node"]["key"], o["graphId"]): o["memberNodes"] for e in edges for o in e["node"]["occurrences"]
    }
    expected = stored(toy_demo)
    ranked = sorted(expected, key=lambda k: expected[k][0])
    # the occurrences of the smallest, the median and the largest drop (the rate limit allows a few)
    for occurrence in (ranked[0], ranked[len(ranked) // 2], ranked[-1]):
        features = [
            {"layer": n["layer"], "position": n["position"], "feature": n["featureIndex"]}
            for n in nodes[occurrence]
        ]
        out = data(client, INTERVENE, g=occurrence[1], f=features, free=free)["intervene"]
        drop, share = _lead_drop(out)
        share_stored, drop_stored = expected[occurrence]
        assert_close(torch.tensor([drop]), torch.tensor([drop_stored]), rel=1e-4)
        assert_close(torch.tensor([share]), torch.tensor([share_stored]), rel=1e-4)
        assert (out["after"][0]["tokenId"] != out["before"][0]["tokenId"]) == (share_stored > 1.0)


def test_limits_hold_through_member_nodes(client: TestClient) -> None:
    wide = """{ subcircuits(first: 100) { edges { node { occurrences(limit: 100) {
      memberNodes { feature { graphs(limit: 100) { graphId } } } } } } } }"""
    body = client.post("/graphql", json={"query": wide}).json()
    assert [e["extensions"]["code"] for e in body["errors"]] == ["QUERY_TOO_COMPLEX"]
    nested = "occurrences { memberNodes { feature { subcircuits { " * 3
    deep = "{ subcircuits { edges { node { " + nested + "key" + " }" * 16
    body = client.post("/graphql", json={"query": deep}).json()
    assert [e["extensions"]["code"] for e in body["errors"]] == ["QUERY_TOO_DEEP"]


def test_occurrences_read_null_until_measured_again(
    client: TestClient, toy_demo: neo4j.Driver, neo4j_settings: Neo4jSettings
) -> None:
    """Mining the subcircuits again drops what the causal step measured; the API reads null until it
    runs again (the API's cache sees both runs)."""
    database = neo4j_settings.database
    run_analysis(toy_demo, steps=["subcircuits"], database=database)
    try:
        unmeasured = listed(client)
        assert unmeasured and set(unmeasured.values()) == {(None, None)}
        assert listed_per_graph(client) == unmeasured
        supports = data(client, "{ subcircuits(first: 100) { edges { node { causalSupport } } } }")
        assert {e["node"]["causalSupport"] for e in supports["subcircuits"]["edges"]} == {None}
        assert set(stored(toy_demo).values()) == {(None, None)}
    finally:
        run_analysis(toy_demo, steps=["causal"], database=database)
    assert listed(client) == listed_per_graph(client) == stored(toy_demo)
