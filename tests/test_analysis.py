"""The analysis layer finds planted mechanisms in synthetic graphs (real Neo4j + GDS server).

Proof of recovery uses graphs with planted circuits built directly as ingest rows
(circuitbase.analysis.synthetic; the toy model with its ground truth was not available): each graph
carries one of two planted paths token -> features -> answer logit plus random noise features and edges,
and a "broken" quarter of the graphs, marked incorrect, lacks the path after its first edge.
"""

from __future__ import annotations

import json
import math

import neo4j
import pytest
from typer.testing import CliRunner

from circuitbase.analysis.communities import CommunityConfig, find_supernodes
from circuitbase.analysis.compare import Split, compare
from circuitbase.analysis.gds import AnalysisError
from circuitbase.analysis.hubs import HubConfig, find_hubs
from circuitbase.analysis.queries import run_query
from circuitbase.analysis.run import AnalysisConfig, resolve_steps, run_analysis
from circuitbase.analysis.similarity import SimilarityConfig, find_similar_graphs
from circuitbase.analysis.subcircuits import RecurringEdges, SubcircuitConfig, mine, mine_subcircuits
from circuitbase.analysis.synthetic import DEFAULT_CIRCUITS, SyntheticConfig, synthetic_graph
from circuitbase.api.repository import Repository, TimedDriver
from circuitbase.cli import app
from circuitbase.ingest.model import GraphRows, feature_key
from circuitbase.ingest.schema import apply_schema
from circuitbase.ingest.writer import write_graph
from circuitbase.settings import PASSWORD_ENV, URI_ENV, USER_ENV, Neo4jSettings

pytestmark = pytest.mark.neo4j

NOISE = {
    "light": SyntheticConfig(n_graphs=40, seed=1),
    # a small noise pool: noise edges recur too, but their features, kept in most graphs, are not specific
    "heavy": SyntheticConfig(n_graphs=40, seed=2, feature_pool=12, noise_features=30, noise_edges=150),
}


def load(driver: neo4j.Driver, config: SyntheticConfig) -> list[GraphRows]:
    apply_schema(driver)
    rows = [synthetic_graph(i, config=config) for i in range(config.n_graphs)]
    for graph in rows:
        write_graph(driver, graph)
    return rows


def planted_support(rows: list[GraphRows], tag: str) -> int:
    return sum(1 for g in rows if tag in g.prompt["tags"] and g.graph["correct"])


def precision_recall(top: list[dict], planted: set[tuple[str, str]]) -> tuple[float, float]:
    """Edge-level precision and recall of the planted edges among the edges of the `top` subcircuits."""
    found = {edge for s in top for edge in zip(s["sources"], s["targets"], strict=True)}
    hits = len(found & planted)
    return hits / len(found), hits / len(planted)


@pytest.mark.parametrize("noise", sorted(NOISE))
def test_mining_recovers_the_planted_circuits(clean_db: neo4j.Driver, noise: str) -> None:
    rows = load(clean_db, NOISE[noise])
    summary = mine_subcircuits(clean_db, config=SubcircuitConfig(min_weight=0.05, min_support=3))
    top = run_query(clean_db, "subcircuits_top", limit=len(DEFAULT_CIRCUITS))
    planted = {edge for c in DEFAULT_CIRCUITS for edge in c.edges()}
    precision, recall = precision_recall(top, planted)
    print(f"{noise} noise: {summary}; precision {precision:.3f}, recall {recall:.3f}")
    assert (precision, recall) == (1.0, 1.0)
    assert summary["closed_subcircuits"] == len(DEFAULT_CIRCUITS)  # heavy: 76 recurring edges
    for circuit in DEFAULT_CIRCUITS:
        [match] = [
            s for s in top if set(zip(s["sources"], s["targets"], strict=True)) == set(circuit.edges())
        ]
        assert match["support"] == planted_support(rows, circuit.tag)
        assert match["support_fraction"] == pytest.approx(match["support"] / len(rows))
        assert 0.3 <= match["influence"] < 0.5  # planted features' influence lies in [0.3, 0.5)
    [occurs] = clean_db.execute_query(
        "MATCH (s:Subcircuit {rank: 1})-[o:OCCURS_IN]->(g:Graph) "
        "RETURN count(g) AS n, all(x IN collect(g.correct) WHERE x) AS all_correct, min(o.weight) AS w"
    ).records
    assert occurs["n"] == top[0]["support"] and occurs["all_correct"]
    assert occurs["w"] >= 0.4 * 3  # every occurrence sums >= 3 planted edges of weight >= 0.4


def test_closures_keep_generic_features_and_shared_tokens_out() -> None:
    """Six graphs; feature A and logit y in graphs 0-2, generic feature G in all six (feeding A in 0-2)."""
    edges = RecurringEdges(
        graph_ids=[f"g{i}" for i in range(6)],
        sources=["tok", "A", "G", "tok", "tok2"],
        targets=["A", "y", "A", "G", "y"],
        graphs=[0b000111, 0b000111, 0b000111, 0b111111, 0b000111],
        feature_support={"A": 3, "G": 6},
    )
    closures = {
        h: {tuple(sorted(s.edges)) for s in mine(edges, k=2, min_edges=1, max_pairs=10, min_specificity=h)}
        for h in (0.6, 0.5)
    }
    # 0.6: G (3 of its 6 graphs) stays out of A's closure; the tok2 -> y edge meets it only at a Token
    assert closures[0.6] == {(0, 1), (3,), (4,)}
    assert closures[0.5] == {(0, 1, 2, 3), (3,), (4,)}  # G may join, and brings its generic input


def test_a_broken_subset_surfaces_in_the_comparison(clean_db: neo4j.Driver) -> None:
    rows = load(clean_db, NOISE["light"])
    mine_subcircuits(clean_db, config=SubcircuitConfig(min_support=3))
    result = compare(clean_db, Split(split="correct"), limit=10)
    n_correct = sum(bool(g.graph["correct"]) for g in rows)
    assert (result.n_a, result.n_b) == (n_correct, len(rows) - n_correct)
    planted = [set(c.edges()) for c in DEFAULT_CIRCUITS]
    for row in result.subcircuits[:2]:
        assert set(zip(row["sources"], row["targets"], strict=True)) in planted
        assert row["k_b"] == 0 and row["p_a"] == pytest.approx(row["k_a"] / result.n_a)
        k_a, n_a, n_b = row["k_a"], result.n_a, result.n_b
        log_odds = math.log((k_a + 0.5) / (n_a - k_a + 0.5)) - math.log(0.5 / (n_b + 0.5))
        se = math.sqrt(1 / (k_a + 0.5) + 1 / (n_a - k_a + 0.5) + 1 / 0.5 + 1 / (n_b + 0.5))
        assert (row["log_odds"], row["z"]) == pytest.approx((log_odds, log_odds / se))
        assert row["z"] > 1.5
    # the features after the break point exist only in correct graphs and lead the feature ranking
    lost = {
        feature_key("synthetic-set", layer, index)
        for c in DEFAULT_CIRCUITS
        for layer, index in c.features[1:]
    }
    leaders = {r["feature"] for r in result.features[: len(lost)]}
    assert leaders == lost
    assert all(r["k_b"] == 0 and r["diff"] > 0 for r in result.features if r["feature"] in lost)
    by_tag = compare(clean_db, Split(a_tag="capitals", b_tag="arithmetic"), limit=50)
    capital_features = {r["feature"] for r in by_tag.features if r["k_b"] == 0 and r["z"] > 2}
    assert feature_key("synthetic-set", 0, 7) in capital_features


def test_supernodes_hubs_and_similarity(clean_db: neo4j.Driver) -> None:
    rows = load(clean_db, NOISE["light"])
    communities = find_supernodes(clean_db, config=CommunityConfig(min_graphs=3, resolution=0.5))
    assert communities["supernodes"] >= len(DEFAULT_CIRCUITS)
    seen = set()
    for circuit in DEFAULT_CIRCUITS:
        keys = sorted({key for edge in circuit.edges() for key in edge})
        [[community]] = clean_db.execute_query(
            "MATCH (n) WHERE (n:Feature OR n:Token) AND n.key IN $keys RETURN collect(DISTINCT n.community)",
            keys=keys,
        ).records
        assert len(community) == 1  # each planted circuit lies in one supernode, its own
        seen.add(community[0])
        [[size]] = clean_db.execute_query(
            "MATCH (s:Supernode {community: $c})-[:HAS_MEMBER]->(m) RETURN count(m)", c=community[0]
        ).records
        assert size >= len(keys)
    assert len(seen) == len(DEFAULT_CIRCUITS)
    find_hubs(clean_db, config=HubConfig(min_graphs=3))
    hubs = run_query(clean_db, "hub_features", order="betweenness", limit=50)
    middle = {feature_key("synthetic-set", *f) for c in DEFAULT_CIRCUITS for f in c.features}
    assert {h["feature"] for h in hubs if h["betweenness"] > 0} == middle  # only planted paths chain >= 3
    find_similar_graphs(clean_db, config=SimilarityConfig(top_k=100, cutoff=0.0))
    features = [{n["ref"] for kind, rs in g.nodes.items() if kind == "FeatureNode" for n in rs} for g in rows]
    jaccard = len(features[0] & features[2]) / len(features[0] | features[2])
    similar = {
        r["graph"]: r["score"] for r in run_query(clean_db, "similar_graphs", graph_id=rows[0].id, limit=100)
    }
    assert similar[rows[2].id] == pytest.approx(jaccard)
    assert max(similar, key=similar.get) in {g.id for g in rows if g.prompt["tags"] == rows[0].prompt["tags"]}


def test_supernodes_carry_their_members_and_internal_weight(clean_db: neo4j.Driver) -> None:
    load(clean_db, NOISE["heavy"])
    summary = find_supernodes(clean_db, config=CommunityConfig(min_graphs=2, batch=7))  # links in batches
    members: dict[int, list[bool]] = {}
    for record in clean_db.execute_query(
        "MATCH (n) WHERE (n:Feature OR n:Token) AND n.community IS NOT NULL "
        "RETURN n.community AS c, n:Feature AS f"
    ).records:
        members.setdefault(record["c"], []).append(record["f"])
    internal: dict[int, float] = {}
    for record in clean_db.execute_query(
        "MATCH (a)-[e:ATTRIBUTES]->(b) WHERE e.graphs >= 2 "
        "RETURN a.community AS a, b.community AS b, e.sum_abs AS w"
    ).records:
        if record["a"] is not None and record["a"] == record["b"]:
            internal[record["a"]] = internal.get(record["a"], 0.0) + record["w"]
    kept = {c: flags for c, flags in members.items() if len(flags) >= 2}
    supernodes = clean_db.execute_query(
        "MATCH (s:Supernode) RETURN s.community AS c, s.size AS size, s.features AS features, "
        "s.internal_weight AS weight, COUNT { (s)-[:HAS_MEMBER]->() } AS links, "
        "COUNT { (s)-[:HAS_MEMBER]->(m) WHERE m.community = s.community } AS own"
    ).records
    assert summary["supernodes"] == len(supernodes) == len(kept) > 1 and sum(map(len, kept.values())) > 7
    for s in supernodes:
        assert s["size"] == s["own"] == s["links"] == len(kept[s["c"]])
        assert s["features"] == sum(kept[s["c"]])
        assert s["weight"] == pytest.approx(internal.get(s["c"], 0.0)) and s["weight"] > 0


def test_betweenness_samples_its_sources_above_a_node_count(clean_db: neo4j.Driver) -> None:
    load(clean_db, NOISE["heavy"])

    def hubs(config: HubConfig) -> tuple[dict, dict[str, float]]:
        summary = find_hubs(clean_db, config=config)
        records = clean_db.execute_query(
            "MATCH (n) WHERE n.betweenness IS NOT NULL RETURN n.key AS key, n.betweenness AS score"
        ).records
        return summary, {r["key"]: r["score"] for r in records}

    exact_summary, exact = hubs(HubConfig(betweenness_sources=None))
    default_summary, default = hubs(HubConfig())
    assert default == exact and default_summary["betweenness_sources"] == exact_summary["nodes"] < 2_000
    sampled_summary, sampled = hubs(HubConfig(betweenness_sources=25))
    assert sampled_summary["betweenness_sources"] == 25 < sampled_summary["nodes"]
    # paths from 25 of the sources only: no node gains, and the total loses the other sources' paths
    assert sampled.keys() == exact.keys() and all(sampled[k] <= exact[k] + 1e-9 for k in exact)
    assert 0 < sum(sampled.values()) < sum(exact.values())


def test_analyze_twice_leaves_one_set_of_results(clean_db: neo4j.Driver) -> None:
    load(clean_db, SyntheticConfig(n_graphs=16, seed=4))
    config = AnalysisConfig(subcircuits=SubcircuitConfig(min_support=3, max_subcircuits=7))
    count = (
        "RETURN COUNT { (:Subcircuit) } AS subcircuits, COUNT { (:Supernode) } AS supernodes, "
        "COUNT { ()-[:SIMILAR]->() } AS similar, COUNT { ()-[:OCCURS_IN]->() } AS occurs, "
        "COUNT { (:AnalysisRun) } AS runs, COUNT { (f:Feature) WHERE f.pagerank IS NOT NULL } AS ranked"
    )
    first = run_analysis(clean_db, config=config)
    before = clean_db.execute_query(count).records[0].data()
    second = run_analysis(clean_db, config=config)
    after = clean_db.execute_query(count).records[0].data()
    assert before == after and before["runs"] == 6 and 0 < before["subcircuits"] <= 7
    assert [r.summary for r in first] == [r.summary for r in second]
    # no source has the synthetic graphs' model: every graph is counted as such and nothing is measured
    [causal] = [r.summary for r in first if r.step == "causal"]
    assert causal["graphs_without_model"] == causal["graphs"] > 0 and causal["subcircuits_measured"] == 0
    [faithfulness] = [r.summary for r in first if r.step == "faithfulness"]
    assert faithfulness["graphs_without_model"] == faithfulness["graphs"] == 16
    [run] = clean_db.execute_query("MATCH (r:AnalysisRun {id: 'subcircuits'}) RETURN r").records
    assert json.loads(run["r"]["params"])["max_subcircuits"] == 7 and run["r"]["status"] == "finished"
    assert clean_db.execute_query("CALL gds.graph.list() YIELD graphName RETURN graphName").records == []


def test_analyze_keeps_user_defined_supernodes(clean_db: neo4j.Driver) -> None:
    load(clean_db, SyntheticConfig(n_graphs=16, seed=4))
    keys = [feature_key("synthetic-set", *f) for f in DEFAULT_CIRCUITS[1].features]
    repo = Repository(TimedDriver(clean_db, timeout_s=30.0))
    repo.define_supernode(key="manual-adder", name="adder", description="", features=keys)
    query = (
        "MATCH (s:Supernode) OPTIONAL MATCH (s)-[:HAS_MEMBER]->(m) "
        "RETURN s.key AS key, s.algorithm AS algorithm, collect(m.key) AS members"
    )
    for _ in range(2):  # a rerun replaces the communities only
        run_analysis(clean_db, steps=["communities"], config=AnalysisConfig())
        records = clean_db.execute_query(query).records
        rows = {r["key"]: (r["algorithm"], sorted(r["members"])) for r in records}
        assert rows.pop("manual-adder") == ("manual", sorted(keys))
        assert rows and all(algorithm == "leiden" for algorithm, _ in rows.values())


def test_bad_requests_are_refused(clean_db: neo4j.Driver) -> None:
    with pytest.raises(AnalysisError, match="no complete graphs"):
        mine_subcircuits(clean_db)
    with pytest.raises(AnalysisError, match="is empty"):
        find_hubs(clean_db)
    with pytest.raises(AnalysisError, match="unknown analysis step 'cluster'"):
        resolve_steps("cluster")
    with pytest.raises(AnalysisError, match="either with split='correct' or with both"):
        Split(a_tag="x")
    with pytest.raises(AnalysisError, match="split must be one of"):
        Split(split="tags")
    load(clean_db, SyntheticConfig(n_graphs=4, seed=5, broken_fraction=0.0))
    with pytest.raises(AnalysisError, match="0 are 'incorrect'"):
        compare(clean_db, Split(split="correct"))


def test_cli_analyze_and_compare(
    clean_db: neo4j.Driver, neo4j_settings: Neo4jSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = load(clean_db, NOISE["light"])
    n_correct = sum(bool(g.graph["correct"]) for g in rows)
    for name, value in ((URI_ENV, neo4j_settings.uri), (USER_ENV, neo4j_settings.user)):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(PASSWORD_ENV, neo4j_settings.password)
    runner = CliRunner()
    args = ["analyze", "--step", "subcircuits", "--min-support", "3", "--subset-tolerance", "0.25"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "recurring_edges=7" in result.output and "written=2" in result.output
    records, _, _ = clean_db.execute_query("MATCH (r:AnalysisRun {id: 'subcircuits'}) RETURN r.params AS p")
    assert json.loads(records[0]["p"])["subset_tolerance"] == 0.25
    result = runner.invoke(app, ["compare", "--split", "correct", "--limit", "3"])
    assert result.exit_code == 0, result.output
    expected = f"A = correct ({n_correct} graphs) vs B = incorrect ({len(rows) - n_correct} graphs)"
    assert expected in " ".join(result.output.split())
    assert runner.invoke(app, ["analyze", "--step", "cluster"]).exit_code == 1
    assert runner.invoke(app, ["compare", "--a-tag", "capitals"]).exit_code == 1
