"""The Cypher query library answers correctly on graphs whose answers are known (real Neo4j server).

Expected values are computed independently, in plain Python, from the very rows that were loaded:
synthetic graphs with planted circuits (circuitbase.analysis.synthetic) and one real graph of the tiny
fixture model.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import neo4j
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitbase.analysis.queries import QueryError, load_query, query_names, query_params, run_query
from circuitbase.analysis.synthetic import MODEL, TRANSCODERS, SyntheticConfig, synthetic_graph
from circuitbase.engine.adapters import adapter_for
from circuitbase.engine.attribution import AttributionConfig, attribute
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.ingest.model import GraphRows, feature_key, rows_from_graph, token_key
from circuitbase.ingest.schema import apply_schema
from circuitbase.ingest.writer import write_graph

pytestmark = pytest.mark.neo4j

FIXTURES = Path(__file__).parent / "fixtures" / "circuit-tracer-format"
CONFIG = SyntheticConfig(n_graphs=12, noise_features=6, noise_edges=20, seed=3)
CAPITAL_IN, CAPITAL_OUT = token_key(MODEL, 1), token_key(MODEL, 2)
A, B = feature_key(TRANSCODERS, 0, 7), feature_key(TRANSCODERS, 2, 11)


@pytest.fixture(scope="module")
def rows() -> list[GraphRows]:
    return [synthetic_graph(i, config=CONFIG) for i in range(CONFIG.n_graphs)]


@pytest.fixture
def db(clean_db: neo4j.Driver, rows: list[GraphRows]) -> neo4j.Driver:
    apply_schema(clean_db)
    for graph in rows:
        write_graph(clean_db, graph)
    return clean_db


def node_list(graph: GraphRows) -> list[dict]:
    """The graph's nodes in `idx` order, each {kind, ref, **props}."""
    out = [{"kind": kind, "ref": r["ref"], **r["props"]} for kind, rs in graph.nodes.items() for r in rs]
    return sorted(out, key=lambda n: n["idx"])


def instance_edges(graph: GraphRows) -> list[tuple[dict, dict, float]]:
    nodes = node_list(graph)
    return [
        (nodes[s], nodes[t], w)
        for s, t, w in zip(graph.edge_src, graph.edge_tgt, graph.edge_weight, strict=True)
    ]


def tagged(rows: list[GraphRows], tag: str) -> list[GraphRows]:
    return [g for g in rows if tag in g.prompt["tags"]]


def test_every_query_documents_itself_and_its_parameters() -> None:
    names = query_names()
    assert {"graph_pruned", "token_logit_paths", "feature_graphs", "features_driving_token"} <= set(names)
    assert "schema" not in names
    for name in names:
        assert query_params(name), f"{name}.cypher declares no :param example"
        text = load_query(name)
        assert "//" not in text.splitlines()[0]
        for param in query_params(name):
            assert f"${param}" in text, f"{name}: declared ${param} is not used"


def test_bad_names_and_parameters_are_refused(db: neo4j.Driver) -> None:
    with pytest.raises(QueryError, match="no Cypher query named 'schema'"):
        load_query("schema")
    with pytest.raises(QueryError, match="no Cypher query named"):
        load_query("../secret")
    with pytest.raises(QueryError, match=r"missing \['min_influence'\], unknown \['minimum'\]"):
        run_query(db, "feature_graphs", feature_key=A, limit=3, minimum=0.0)


def test_pruned_graph_of_one_prompt(db: neo4j.Driver, rows: list[GraphRows]) -> None:
    graph = rows[0]
    result = run_query(db, "graph_pruned", graph_id=graph.id)
    expected = sorted((s["node"], t["node"], w) for s, t, w in instance_edges(graph))
    assert sorted((r["source"], r["target"], r["weight"]) for r in result) == expected
    assert [abs(r["weight"]) for r in result] == sorted((abs(w) for *_, w in expected), reverse=True)
    kinds = {r["source_kind"] for r in result} | {r["target_kind"] for r in result}
    assert kinds <= {"FeatureNode", "ErrorNode", "TokenNode", "LogitNode"}
    db.execute_query("MATCH (g:Graph {id: $id}) SET g.complete = false", id=graph.id)
    assert run_query(db, "graph_pruned", graph_id=graph.id) == []  # incomplete graphs never count


def test_strongest_token_to_logit_path_is_the_planted_one(db: neo4j.Driver, rows: list[GraphRows]) -> None:
    graph = next(g for g in tagged(rows, "capitals") if g.graph["correct"])
    planted = {(s["ref"], t["ref"]): w for s, t, w in instance_edges(graph)}
    effect = planted[CAPITAL_IN, A] * planted[A, B] * planted[B, CAPITAL_OUT]
    [best] = run_query(
        db,
        "token_logit_paths",
        token_key=CAPITAL_IN,
        logit_key=CAPITAL_OUT,
        graph_id=graph.id,
        min_weight=0.35,
        limit=1,
    )
    assert best["refs"] == [CAPITAL_IN, A, B, CAPITAL_OUT]
    assert best["effect"] == pytest.approx(effect, rel=1e-12)
    assert best["hops"] == 3


def test_graphs_where_a_feature_is_influential(db: neo4j.Driver, rows: list[GraphRows]) -> None:
    expected = {}
    for graph in rows:
        infl = [n["influence"] for n in node_list(graph) if n["ref"] == B]
        if infl:
            expected[graph.id] = max(infl)
    result = run_query(db, "feature_graphs", feature_key=B, min_influence=0.0, limit=100)
    assert {r["graph"]: r["influence"] for r in result} == pytest.approx(expected)
    assert [r["influence"] for r in result] == sorted(expected.values(), reverse=True)
    assert all(r["correct"] for r in result)  # B is planted only in graphs that keep the whole path
    threshold = sorted(expected.values())[len(expected) // 2]
    above = run_query(db, "feature_graphs", feature_key=B, min_influence=threshold, limit=100)
    assert len(above) == sum(v >= threshold for v in expected.values())


def _direct(rows: list[GraphRows], *, token: str, into_token: bool) -> dict[str, tuple[int, float]]:
    """feature -> (graphs, summed weight) of feature->logit edges (into_token) or token->feature edges."""
    per_graph: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for graph in rows:
        for s, t, w in instance_edges(graph):
            if into_token and t["kind"] == "LogitNode" and t["ref"] == token and s["kind"] == "FeatureNode":
                per_graph[s["ref"]][graph.id] += w
            if (
                not into_token
                and s["kind"] == "TokenNode"
                and s["ref"] == token
                and t["kind"] == "FeatureNode"
            ):
                per_graph[t["ref"]][graph.id] += w
    return {f: (len(g), sum(g.values())) for f, g in per_graph.items()}


@pytest.mark.parametrize(
    ("query", "token", "into_token", "top"),
    [
        ("features_driving_token", CAPITAL_OUT, True, B),
        ("features_driven_by_token", CAPITAL_IN, False, A),
    ],
)
def test_features_linked_to_a_token(
    db: neo4j.Driver, rows: list[GraphRows], query: str, token: str, into_token: bool, top: str
) -> None:
    expected = _direct(rows, token=token, into_token=into_token)
    result = run_query(db, query, token_key=token, min_graphs=1, limit=100)
    assert {r["feature"]: r["graphs"] for r in result} == {f: n for f, (n, _) in expected.items()}
    assert {r["feature"]: r["total_weight"] for r in result} == pytest.approx(
        {f: w for f, (_, w) in expected.items()}
    )
    assert result[0]["feature"] == top
    planted_graphs = (
        len(tagged(rows, "capitals"))
        if top == A
        else sum(g.graph["correct"] for g in tagged(rows, "capitals"))
    )
    assert result[0]["graphs"] == planted_graphs


def test_features_shared_by_a_set_of_prompts(db: neo4j.Driver, rows: list[GraphRows]) -> None:
    capitals = tagged(rows, "capitals")
    ids = [g.prompt["id"] for g in capitals]
    shared = run_query(db, "features_shared", prompt_ids=ids, min_fraction=1.0, limit=100)
    assert [r["feature"] for r in shared] == [A]  # the planted first feature is in every capitals graph
    everything = run_query(db, "features_shared", prompt_ids=ids, min_fraction=0.0, limit=1000)
    fraction = {r["feature"]: r["fraction"] for r in everything}
    assert fraction[B] == pytest.approx(sum(g.graph["correct"] for g in capitals) / len(capitals))
    expected_features = {n["ref"] for g in capitals for n in node_list(g) if n["kind"] == "FeatureNode"}
    assert set(fraction) == expected_features


def test_features_unique_to_one_side(db: neo4j.Driver, rows: list[GraphRows]) -> None:
    def features(tag: str) -> set[str]:
        return {n["ref"] for g in tagged(rows, tag) for n in node_list(g) if n["kind"] == "FeatureNode"}

    only_a, only_b = (
        features("capitals") - features("arithmetic"),
        features("arithmetic") - features("capitals"),
    )
    result = run_query(
        db, "features_unique", split=None, a_tag="capitals", b_tag="arithmetic", min_graphs=1, limit=1000
    )
    assert {r["feature"] for r in result if r["side"] == "a"} == only_a
    assert {r["feature"] for r in result if r["side"] == "b"} == only_b
    assert {A, B} <= only_a
    by_correct = run_query(
        db, "features_unique", split="correct", a_tag=None, b_tag=None, min_graphs=2, limit=1000
    )
    assert B in {r["feature"] for r in by_correct if r["side"] == "a"}  # only correct graphs keep B


def test_neighbourhood_in_the_aggregated_graph(db: neo4j.Driver, rows: list[GraphRows]) -> None:
    capitals = tagged(rows, "capitals")
    result = run_query(db, "feature_neighbourhood", feature_key=A, min_graphs=1, limit=100)
    by_key = {(r["direction"], r["neighbour"]): r for r in result}
    assert by_key["in", CAPITAL_IN]["graphs"] == len(capitals)
    assert by_key["in", CAPITAL_IN]["kind"] == "Token"
    assert by_key["out", B]["graphs"] == sum(g.graph["correct"] for g in capitals)
    sums = defaultdict(float)
    for graph in rows:
        for s, t, w in instance_edges(graph):
            if s["ref"] == A and t["ref"]:
                sums["out", t["ref"]] += w
            if t["ref"] == A and s["ref"]:
                sums["in", s["ref"]] += w
    assert {k: r["sum"] for k, r in by_key.items()} == pytest.approx(dict(sums))


def test_real_tiny_llama_graph_round_trips(clean_db: neo4j.Driver) -> None:
    model = AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny-llama").eval()
    ids = AutoTokenizer.from_pretrained(FIXTURES / "tiny-llama")(
        "the cat sat on the mat", return_tensors="pt"
    )
    graph = attribute(
        model,
        adapter_for(model),
        TranscoderSet.load(FIXTURES / "plt-jumprelu-skip"),
        ids.input_ids[0],
        config=AttributionConfig(max_feature_nodes=64),
        model_name="tiny-llama",
        prompt="the cat sat on the mat",
        prompt_meta={"id": "real-0", "tags": ["real"]},
    )
    rows = rows_from_graph(graph)
    apply_schema(clean_db)
    write_graph(clean_db, rows)
    result = run_query(clean_db, "graph_pruned", graph_id=rows.id)
    assert len(result) == int(graph.edge_mask.sum()) == rows.n_edges
    assert sum(r["weight"] for r in result) == pytest.approx(sum(rows.edge_weight), rel=1e-9, abs=1e-9)
    top_logit = token_key(graph.model_name, int(graph.logit_tokens[0]))
    expected = _direct([rows], token=top_logit, into_token=True)
    driving = run_query(clean_db, "features_driving_token", token_key=top_logit, min_graphs=1, limit=1000)
    assert expected, "the top logit of the real graph has feature drivers"
    assert {r["feature"]: r["graphs"] for r in driving} == {f: n for f, (n, _) in expected.items()}
    assert {r["feature"]: r["total_weight"] for r in driving} == pytest.approx(
        {f: w for f, (_, w) in expected.items()}
    )
