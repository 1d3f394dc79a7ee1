"""The GraphQL API against the real Neo4j server: real tiny-model graphs and synthetic planted circuits."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import neo4j
import pytest
from fastapi.testclient import TestClient

from circuitbase.analysis.synthetic import synthetic_graph
from circuitbase.api.app import ApiConfig, create_app
from circuitbase.api.auth import create_key, list_keys, revoke_key
from circuitbase.api.jobs import IngestSettings
from circuitbase.api.limits import Limits
from circuitbase.engine.graph import AttributionGraph
from circuitbase.ingest.model import feature_key, graph_id
from tests.api_data import FIXTURES, SYNTHETIC

pytest_plugins = ["tests.api_data"]  # the graph_files and store fixtures
pytestmark = pytest.mark.neo4j


class CountingDriver:
    """The real driver, counting the queries sent through it (execute_query and session runs)."""

    def __init__(self, driver: neo4j.Driver) -> None:
        self.driver, self.queries = driver, 0
        self.execute_query_bookmark_manager = driver.execute_query_bookmark_manager

    def execute_query(self, *args: Any, **kwargs: Any) -> Any:
        self.queries += 1
        return self.driver.execute_query(*args, **kwargs)

    def session(self, **kwargs: Any) -> neo4j.Session:
        session = self.driver.session(**kwargs)
        run = session.run

        def counted(*args: Any, **kwargs: Any) -> neo4j.Result:
            self.queries += 1
            return run(*args, **kwargs)

        session.run = counted  # type: ignore[method-assign]
        return session


@pytest.fixture(scope="module")
def counting(store: neo4j.Driver) -> CountingDriver:
    return CountingDriver(store)


@pytest.fixture(scope="module")
def client(counting: CountingDriver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    ingest = IngestSettings(
        model=str(FIXTURES / "tiny-llama"),
        transcoders=FIXTURES / "plt-relu",
        graphs_out=tmp_path_factory.mktemp("api-ingest"),
        device="cpu",
    )
    config = ApiConfig(limits=Limits(max_depth=8, max_page_size=50), ingest=ingest)
    with TestClient(create_app(config=config, driver=counting)) as client:  # type: ignore[arg-type]
        yield client


@pytest.fixture(scope="module")
def api_key(store: neo4j.Driver) -> str:
    return create_key(store, name="tests")[1]


def gql(client: TestClient, query: str, key: str | None = None, **variables: Any) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    assert response.status_code < 500, response.text
    return response.json()


def data(client: TestClient, query: str, key: str | None = None, **variables: Any) -> dict:
    body = gql(client, query, key, **variables)
    assert "errors" not in body, body
    return body["data"]


def codes(body: dict) -> list[str]:
    return [e["extensions"]["code"] for e in body["errors"]]


def test_health_ready_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/readyz"} <= set(paths)
    assert "graphiql" in client.get("/graphql", headers={"Accept": "text/html"}).text.lower()


def test_graph_matches_its_file(client: TestClient, graph_files: list[Path]) -> None:
    for path in graph_files:
        graph = AttributionGraph.load(path)
        gid = graph_id(graph.transcoder_name, graph.prompt_meta["id"])
        _, weights = graph.edges(pruned=True)
        out = data(
            client,
            """query($id: ID!, $k: Int!) { graph(id: $id) {
                 id correct topToken replacementScore completenessScore nNodes nEdges prompt { text tags }
                 faithfulness faithfulnessCorrelation logitShareMeasured logitSharePredicted
                 full: view(minInfluence: -1e30, topK: $k) { nodes { node kind } edges { weight } }
                 top: view(minInfluence: -1e30, topK: 5) { edges { weight } } } }""",
            id=gid,
            k=max(1, weights.numel()),
        )["graph"]
        assert out["correct"] == graph.prompt_meta["correct"]
        assert out["topToken"] == graph.prompt_meta["top_token"]
        assert out["replacementScore"] == pytest.approx(float(graph.replacement_score))
        assert out["completenessScore"] == pytest.approx(float(graph.completeness_score))
        checked = graph.params["faithfulness"]
        for field, key in [
            ("faithfulness", "logit_agreement"),
            ("faithfulnessCorrelation", "logit_correlation"),
            ("logitShareMeasured", "logit_share_measured"),
            ("logitSharePredicted", "logit_share_predicted"),
        ]:
            assert out[field] == (None if checked[key] is None else pytest.approx(checked[key])), field
        assert out["faithfulness"] is not None
        assert out["prompt"]["text"] == graph.prompt
        assert len(out["full"]["nodes"]) == out["nNodes"] == int(graph.node_mask.sum())
        assert len(out["full"]["edges"]) == out["nEdges"] == weights.numel()
        assert sum(e["weight"] for e in out["full"]["edges"]) == pytest.approx(
            float(weights.double().sum()), abs=1e-6
        )
        strongest = sorted(weights.abs().tolist(), reverse=True)[:5]
        assert [abs(e["weight"]) for e in out["top"]["edges"]] == pytest.approx(strongest, rel=1e-6)


def test_pruning_levels_filter_nodes_and_edges(client: TestClient) -> None:
    gid = graph_id("synthetic-set", "synthetic-0-0")
    query = """query($id: ID!, $i: Float!, $w: Float!) { graph(id: $id) {
        all: view(minInfluence: -1, topK: 1000) { nodes { influence kind } edges { weight } }
        pruned: view(minInfluence: $i, minAbsWeight: $w, topK: 1000) {
          nodes { influence kind } edges { weight } }
    } }"""
    out = data(client, query, id=gid, i=0.2, w=0.35)["graph"]
    kept = [n for n in out["all"]["nodes"] if n["kind"] in ("TOKEN", "LOGIT") or n["influence"] >= 0.2]
    assert len(out["pruned"]["nodes"]) == len(kept) < len(out["all"]["nodes"])
    assert out["pruned"]["edges"] and all(abs(e["weight"]) >= 0.35 for e in out["pruned"]["edges"])
    assert len(out["pruned"]["edges"]) < len(out["all"]["edges"])


def test_nodes_resolve_their_features_and_tokens_also_through_fragments(client: TestClient) -> None:
    query = """query($id: ID!) { graph(id: $id) { view(minInfluence: -1) {
        direct: nodes { kind feature { key } token { key } }
        spread: nodes { ...Refs } } } }
        fragment Refs on GraphNode { feature { key } ... on GraphNode { token { key } } }"""
    view = data(client, query, id=graph_id("synthetic-set", "synthetic-0-0"))["graph"]["view"]
    assert view["spread"] == [{"feature": n["feature"], "token": n["token"]} for n in view["direct"]]
    rows = synthetic_graph(0, config=SYNTHETIC).nodes
    for field, kinds in (
        ("feature", {"FEATURE": "FeatureNode"}),
        ("token", {"TOKEN": "TokenNode", "LOGIT": "LogitNode"}),
    ):
        assert all((n[field] is not None) == (n["kind"] in kinds) for n in view["direct"])
        found = {n[field]["key"] for n in view["direct"] if n[field]}
        assert found == {r["ref"] for kind in kinds.values() for r in rows[kind]}


def test_graph_list_filters_and_pages(client: TestClient) -> None:
    query = """query($f: GraphFilterInput, $after: String) {
        graphs(filter: $f, first: 5, after: $after) { totalCount edges { cursor node { id correct } }
        pageInfo { hasNextPage endCursor } } }"""
    seen, after = [], None
    while True:
        page = data(client, query, f={"model": "synthetic", "correct": True}, after=after)["graphs"]
        seen += [e["node"]["id"] for e in page["edges"]]
        assert all(e["node"]["correct"] for e in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    expected = sorted(
        synthetic_graph(i, config=SYNTHETIC).id
        for i in range(SYNTHETIC.n_graphs)
        if synthetic_graph(i, config=SYNTHETIC).graph["correct"]
    )
    assert seen == expected and page["totalCount"] == len(expected)
    tagged = data(client, '{ prompts(filter: {tag: "left"}) { edges { node { id tags } } } }')["prompts"]
    assert [e["node"]["id"] for e in tagged["edges"]] == ["p0", "p1"]


def test_feature_page_lists_its_graphs_and_neighbours(client: TestClient, graph_files: list[Path]) -> None:
    planted = SYNTHETIC.circuits[0]
    key = feature_key("synthetic-set", *planted.features[0])
    out = data(
        client,
        """query($k: ID!) { feature(key: $k) { key layer index
             graphs(limit: 50) { graphId influence graph { correct } }
             neighbours(limit: 10) { direction key kind graphs } } }""",
        k=key,
    )["feature"]
    users = [i for i in range(SYNTHETIC.n_graphs) if i % len(SYNTHETIC.circuits) == 0]
    assert {g["graphId"] for g in out["graphs"]} == {
        graph_id("synthetic-set", f"synthetic-0-{i}") for i in users
    }
    influences = [g["influence"] for g in out["graphs"]]
    assert influences == sorted(influences, reverse=True)
    # the planted path: input token -> this feature (every graph), this feature -> the next (unbroken ones)
    by_key = {(n["direction"], n["key"]): n for n in out["neighbours"]}
    assert by_key[("in", f"synthetic/{planted.token}")]["graphs"] == len(users)
    unbroken = sum(synthetic_graph(i, config=SYNTHETIC).graph["correct"] for i in users)
    assert by_key[("out", feature_key("synthetic-set", *planted.features[1]))]["graphs"] == unbroken
    assert (
        gql(client, '{ feature(key: "no/such/feature") { key } }')["errors"][0]["extensions"]["code"]
        == "NOT_FOUND"
    )


def test_subcircuits_ranked_by_total_influence(client: TestClient) -> None:
    out = data(
        client,
        """{ subcircuits(first: 10) { edges { node { key rank support influence edges { source target }
                          occurrences(limit: 50) { graphId weight } } } } }""",
    )["subcircuits"]
    nodes = [e["node"] for e in out["edges"]]
    assert nodes and [n["rank"] for n in nodes] == sorted(n["rank"] for n in nodes)
    totals = [n["support"] * n["influence"] for n in nodes]  # support x mean influence over occurrences
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(totals))
    assert all(len(n["occurrences"]) == n["support"] for n in nodes)
    planted = {tuple(e) for c in SYNTHETIC.circuits for e in c.edges()}
    assert any({(e["source"], e["target"]) for e in n["edges"]} <= planted for n in nodes)


def test_compare_prompts_side_by_side(client: TestClient) -> None:
    out = data(
        client,
        """{ comparePrompts(promptIds: ["synthetic-0-0", "synthetic-0-2", "synthetic-0-1"]) {
        graphIds features(limit: 50) { key graphs shared uniqueTo influence }
        shared: features(only: SHARED) { key }
        subcircuits { key shared weight } } }""",
    )["comparePrompts"]
    assert len(out["graphIds"]) == 3
    rows = [synthetic_graph(i, config=SYNTHETIC) for i in (0, 2, 1)]
    keyed: list[dict[str, float]] = [{} for _ in rows]
    for found, r in zip(keyed, rows, strict=True):
        for n in r.nodes["FeatureNode"]:
            found[n["ref"]] = max(found.get(n["ref"], -1.0), n["props"]["influence"])
    expected_shared = set(keyed[0]) & set(keyed[1]) & set(keyed[2])
    assert {f["key"] for f in out["shared"]} == expected_shared
    for feature in out["features"]:
        present = [k.get(feature["key"]) for k in keyed]
        assert feature["graphs"] == sum(p is not None for p in present)
        assert feature["influence"] == pytest.approx(present)
        assert feature["shared"] == (feature["graphs"] == 3)
    assert all(len(s["weight"]) == 3 for s in out["subcircuits"])


def test_compare_sets_by_tag(client: TestClient) -> None:
    out = data(
        client,
        """{ compareSets(sides: {aTag: "capitals", bTag: "arithmetic"}, limit: 5) {
        a b nA nB features { key kA nA kB nB diff } subcircuits { key diff }
        uniqueFeatures(limit: 10) { key side graphsA graphsB } } }""",
    )["compareSets"]
    assert (out["nA"], out["nB"]) == (SYNTHETIC.n_graphs // 2, SYNTHETIC.n_graphs // 2)
    top = out["features"][0]
    assert abs(top["diff"]) == pytest.approx(1.0)  # a planted input feature: in every graph of one side only
    capitals = {feature_key("synthetic-set", *f) for f in SYNTHETIC.circuits[0].features}
    assert capitals & {u["key"] for u in out["uniqueFeatures"] if u["side"] == "a"}
    body = gql(client, '{ compareSets(sides: {aTag: "x"}) { nA } }')
    assert codes(body) == ["BAD_USER_INPUT"]


def test_nested_dashboard_query_has_no_n_plus_one(client: TestClient, counting: CountingDriver) -> None:
    query = """query($n: Int!) { graphs(first: $n, filter: {model: "synthetic"}) { edges { node { id
        prompt { text } view(topK: 50) { nodes { node feature { key label } } } } } } }"""
    counts = []
    for n in (2, 12):
        before = counting.queries
        out = data(client, query, n=n)
        counts.append(counting.queries - before)
        labels = [nd for e in out["graphs"]["edges"] for nd in e["node"]["view"]["nodes"] if nd["feature"]]
        assert len(out["graphs"]["edges"]) == n and labels
    # graphs, prompts, nodes, features: one round trip per level, whatever the page size
    assert counts == [4, 4]


def test_words_load_in_batches(client: TestClient, counting: CountingDriver) -> None:
    query = """query($n: Int!) {
        subcircuits(first: $n) { edges { node { sentence edges { sourceText targetText } } } }
        graphs(first: $n, filter: {model: "synthetic"}) { edges { node {
          view(topK: 50) { nodes { text feature { description } } } } } } }"""
    counts = []
    for n in (2, 12):
        before = counting.queries
        out = data(client, query, n=n)
        counts.append(counting.queries - before)
        sentences = [e["node"]["sentence"] for e in out["subcircuits"]["edges"]]
        texts = [nd["text"] for e in out["graphs"]["edges"] for nd in e["node"]["view"]["nodes"]]
        assert len(out["graphs"]["edges"]) == n and all(sentences) and all(texts)
    # subcircuits, their words (one batch per level), graphs, nodes, features, tokens: not one per item
    assert counts[0] == counts[1] <= 7


def test_mutations_need_a_key(client: TestClient, api_key: str, store: neo4j.Driver) -> None:
    key = feature_key("synthetic-set", *SYNTHETIC.circuits[0].features[0])
    mutation = 'mutation($k: ID!) { labelFeature(key: $k, label: "capital city") { key label } }'
    assert codes(gql(client, mutation, k=key)) == ["UNAUTHENTICATED"]
    assert codes(gql(client, mutation, "cbk_000000000000_" + "x" * 43, k=key)) == ["UNAUTHENTICATED"]
    assert data(client, mutation, api_key, k=key)["labelFeature"] == {"key": key, "label": "capital city"}
    assert (
        data(client, "query($k: ID!) { feature(key: $k) { label } }", k=key)["feature"]["label"]
        == "capital city"
    )
    assert codes(gql(client, mutation, api_key, k="no/such/1")) == ["NOT_FOUND"]

    members = [feature_key("synthetic-set", *f) for f in SYNTHETIC.circuits[1].features]
    define = 'mutation($f: [ID!]!) { defineSupernode(name: "arith", features: $f) { key size members } }'
    out = data(client, define, api_key, f=members)["defineSupernode"]
    assert out == {"key": "manual-arith", "size": 3, "members": sorted(members)}
    supernodes = data(client, "query($k: ID!) { feature(key: $k) { supernodes { name } } }", k=members[0])
    assert supernodes["feature"]["supernodes"] == [{"name": "arith"}]

    key_id = api_key.split("_")[1]
    assert any(k["id"] == key_id and not k["revoked"] for k in list_keys(store))
    other = create_key(store, name="revoked")
    revoke_key(store, other[0])
    assert codes(gql(client, mutation, other[1], k=key)) == ["UNAUTHENTICATED"]


def test_reads_can_require_a_key(counting: CountingDriver, api_key: str) -> None:
    with TestClient(create_app(config=ApiConfig(read_access="key"), driver=counting)) as closed:  # type: ignore[arg-type]
        assert codes(gql(closed, "{ models { name } }")) == ["UNAUTHENTICATED"]
        assert data(closed, "{ models { name } }", api_key)["models"]
        assert data(closed, "{ __schema { queryType { name } } }")["__schema"]["queryType"]["name"] == "Query"


def test_limits_and_error_codes(client: TestClient) -> None:
    shown = data(client, "{ limits { maxDepth maxPageSize maxEdges maxInterventionFeatures } }")["limits"]
    assert shown == {"maxDepth": 8, "maxPageSize": 50, "maxEdges": 50_000, "maxInterventionFeatures": 32}
    nested = "prompt { graphs { " * 3
    deep = "{ graphs { edges { node { " + nested + "id" + " }" * 10
    assert codes(gql(client, deep)) == ["QUERY_TOO_DEEP"]
    wide = "{ graphs(first: 50) { edges { node { view(topK: 50000) { edges { weight } } } } } }"
    assert codes(gql(client, wide)) == ["QUERY_TOO_COMPLEX"]
    assert codes(gql(client, "{ graphs(first: 51) { edges { cursor } } }")) == ["BAD_USER_INPUT"]
    assert codes(gql(client, '{ graphs(after: "bogus") { edges { cursor } } }')) == ["BAD_USER_INPUT"]
    assert codes(gql(client, "{ nosuchfield }")) == ["GRAPHQL_VALIDATION_FAILED"]
    assert codes(gql(client, "{ graphs(")) == ["GRAPHQL_PARSE_FAILED"]
    body = gql(client, "query($n: Int!) { graphs(first: $n) { edges { cursor } } }", n="many")
    assert codes(body) == ["BAD_USER_INPUT"]


def test_unexpected_errors_are_masked(client: TestClient, store: neo4j.Driver) -> None:
    store.execute_query(
        "CREATE (:Graph {id: 'broken', complete: true})-[:OF_PROMPT]->(:Prompt {id: 'broken'})"
    )
    try:
        body = gql(client, '{ graph(id: "broken") { id model } }')
    finally:
        store.execute_query("MATCH (g:Graph {id: 'broken'})-[:OF_PROMPT]->(p) DETACH DELETE g, p")
    assert codes(body) == ["INTERNAL_SERVER_ERROR"]
    assert body["errors"][0]["message"] == "internal error"


def test_ingest_and_analysis_jobs_run_in_the_background(client: TestClient, api_key: str) -> None:
    start = """mutation { startIngest(prompts: [{text: "the cat", answer: " sat", tags: ["job"], id: "job0"}],
               maxFeatureNodes: 32) { id status total } }"""
    job = data(client, start, api_key)["startIngest"]
    assert job["total"] == 1
    poll = "query($id: ID!) { job(id: $id) { status error progress ingestJob { status graphsLoaded } } }"
    for _ in range(600):
        state = data(client, poll, id=job["id"])["job"]
        if state["status"] in ("finished", "failed"):
            break
        time.sleep(0.1)
    assert state["status"] == "finished", state
    assert state["progress"] == 1.0 and state["ingestJob"] == {"status": "finished", "graphsLoaded": 1}
    graph = data(client, '{ prompts(filter: {tag: "job"}) { edges { node { id graphs { correct } } } } }')
    assert [e["node"]["id"] for e in graph["prompts"]["edges"]] == ["job0"]
    assert codes(gql(client, 'mutation { startAnalysis(steps: ["nope"]) { id } }', api_key)) == [
        "BAD_USER_INPUT"
    ]
