"""The analysis layer on the toy model with planted circuits: do the top recurring subcircuits recover them?

Study: every two-hop prompt ("capital of city_c is", all 96 cities: trained, compose, unknown), the
five held-out and some trained arithmetic prompts, and a few copy prompts, attributed and ingested into
Neo4j, then `run_analysis`.

Recovery is scored by tests/planted_recovery.py, whose docstring defines it: the top 20 subcircuits
among those with causal support >= 0.5 (what `analyze --min-causal-support 0.5` keeps); a chain
subcircuit *recovers* state s when its taught two-hop occurrences are (>= 90%) state-s prompts, it holds
an edge from a state-s feature to cap_s, reaches no other logit, and every feature instance in it fires
more on state-s prompts than on others and is no other state's feature; every other chain subcircuit is a
false positive. Precision = recovered / chain subcircuits scored, recall = share of the 8 states
recovered, answer recall = share of the 8 capitals some scored subcircuit's edge reaches.

Measured: 12 subcircuits kept of 34 mined (k = 7 of 130 graphs), precision 0.92 (11 of 12), recall 1.0,
answer recall 1.0; strict precision (every feature instance a state feature) 0.42. The one false
positive (rank 6, state 6, causal support 0.92) holds a template-word feature (at "of", the same in every
prompt) that the state-6 feature reads. Without the causal filter, all 34: precision 0.38 (the template
words into generic features, 21 of them, are false positives that causal support removes: 20 of the 21
are below 0.5), recall 1.0.
History: before specificity, feature-only connectivity, the start-token rule and the ranking by total
influence: precision 0.025, recall 0.0 among 144 (template -> generic-feature edges shared by all states
swallowed the state-specific ones and <bos> joined every subcircuit). Then, under the earlier definition
(every edge between question tokens, state features and cap_s; a state recovered by a state feature ->
cap_s edge; no causal filter, top 40): precision 0.625, recall 0.75; that definition counted template
words -> a state feature without the answer as correct and every feature shared by two states as wrong,
and states 1 and 2 were missed because the model's layer-0 code for them is such shared features (L0
#94 fires for states 2 and 7, L0 #98 for 0, 2, 3 and 7; ablated alone in state-2 prompts each takes 5-9%
of the answer's lead, as much as a selective layer-0 feature of another state). Joining features through
the answer logit they feed (analysis/subcircuits.py) merged state 0's three parallel layer-1 features,
each a fragment of causal support <= 0.31 alone, into one of 0.92 to 1.0; dropping closures covered by a
larger one in >= 90% of their graphs removed a state-5 fragment without its answer edge.
"""

from __future__ import annotations

import json
from typing import Any

import neo4j
import pytest

from circuitbase.analysis.causal import CausalConfig
from circuitbase.analysis.compare import Split, compare
from circuitbase.analysis.queries import run_query
from circuitbase.analysis.run import AnalysisConfig, run_analysis
from circuitbase.engine import toy
from circuitbase.settings import Neo4jSettings
from tests.planted_recovery import concept_features, covered_pairs, run_study, score_recovery, study_prompt
from tests.toy_demo_data import shipped_toy

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]

TOP_N = 20
MIN_CAUSAL_SUPPORT = 0.5
UNTAUGHT = {"unknown", "held_out"}


def _study_prompts() -> list[dict[str, Any]]:
    fixed = toy.fixed_examples()
    two_hop = [e for e in fixed if e["tags"][0] == "two_hop"]
    arithmetic = [e for e in fixed if e["tags"][0] == "arithmetic"]
    held_out = [e for e in arithmetic if "held_out" in e["tags"]]
    trained = [e for e in arithmetic if "trained" in e["tags"]][::5]
    copies = [p for p in toy.toy_prompts(40, seed=5) if p["tags"][0] == "copy"]
    return [*two_hop, *held_out, *trained, *copies]


@pytest.fixture(scope="module")
def study(
    neo4j_driver: neo4j.Driver, neo4j_settings: Neo4jSettings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Ingest + analyse the study on an emptied database; returns what the tests measure against."""
    database = neo4j_settings.database
    loaded, transcoders = shipped_toy()
    examples = _study_prompts()
    loaded_graphs, results = run_study(
        neo4j_driver,
        loaded,
        transcoders,
        [study_prompt(e) for e in examples],
        tmp_path_factory.mktemp("toy_graphs"),
        database=database,
    )
    assert loaded_graphs == len(examples)
    records, _, _ = neo4j_driver.execute_query(
        "MATCH (t:Token) RETURN t.key AS key, t.text AS text", database_=database
    )
    return {
        "database": database,
        "subcircuits": results["subcircuits"].summary,
        "concepts": concept_features(loaded, transcoders, world=toy.TOY),
        "covered": covered_pairs([e["prompt"] for e in examples], toy.TOY),
        "token_text": {r["key"]: r["text"] for r in records},
    }


def _score(driver: neo4j.Driver, study: dict[str, Any], **limits: Any) -> dict[str, Any]:
    return score_recovery(
        driver,
        database=study["database"],
        world=toy.TOY,
        concepts=study["concepts"],
        covered=study["covered"],
        **limits,
    )


def test_top_subcircuits_recover_the_planted_two_hop_paths(neo4j_driver: neo4j.Driver, study: dict) -> None:
    top = _score(neo4j_driver, study, top_n=TOP_N, min_causal_support=MIN_CAUSAL_SUPPORT)
    every = _score(neo4j_driver, study, top_n=10_000, min_causal_support=0.0)
    print(f"\n{study['subcircuits']}")
    for name, scored in (("top", top), ("all, no causal filter", every)):
        print(f"{name}: { {k: v for k, v in scored.items() if k != 'verdicts'} }")
    assert top["chain"] == top["scored"] >= 8  # the two-hop prompts dominate the recurring structure
    assert top["precision"] >= 0.9 and top["recall"] >= 0.9 and top["answer_recall"] == 1.0
    assert every["recall"] == 1.0 and every["precision"] < top["precision"]  # the causal filter's part
    # <bos>, at position 0 of every prompt, is the one start token: none of its edges is mined
    rows = run_query(neo4j_driver, "subcircuits_top", database=study["database"], limit=500)
    bos = {key for key, text in study["token_text"].items() if text == "<bos>"}
    assert study["subcircuits"]["start_tokens"] == len(bos) == 1
    assert not bos & {source for row in rows for source in row["sources"]}


def test_untaught_prompts_surface_in_the_right_vs_wrong_comparison(
    neo4j_driver: neo4j.Driver, study: dict
) -> None:
    database = study["database"]
    records, _, _ = neo4j_driver.execute_query(
        "MATCH (g:Graph {complete: true})-[:OF_PROMPT]->(p:Prompt) "
        "RETURN g.correct AS correct, p.tags AS tags",
        database_=database,
    )
    wrong = [r["tags"] for r in records if r["correct"] is False]
    untaught_wrong = sum(bool(UNTAUGHT & set(t)) for t in wrong)
    untaught = sum(bool(UNTAUGHT & set(r["tags"])) for r in records)
    # the crude table over all graphs (one stratum, every row): untaught prompts are a task of their own
    comparison = compare(
        neo4j_driver, Split(split="correct"), within="none", all_rows=True, database=database, limit=10
    )
    top_features = comparison.features[:5]
    print(
        f"\nwrong {len(wrong)} (untaught {untaught_wrong} of {untaught}), right {comparison.n_a}; "
        f"top features {[(r['feature'], round(r['p_a'], 2), round(r['p_b'], 2)) for r in top_features]}; "
        f"top subcircuit diffs {[round(r['diff'], 2) for r in comparison.subcircuits[:5]]}"
    )
    assert (comparison.n_a, comparison.n_b) == (len(records) - len(wrong), len(wrong))
    assert untaught_wrong >= 0.6 * len(wrong) and untaught_wrong >= 0.5 * untaught
    # the biggest differences are features and subcircuits mostly on the wrong side (measured: the top
    # three subcircuits at diff -0.35, -0.31, -0.31; the fourth, +0.25, is a right-side one)
    assert sum(r["p_b"] > r["p_a"] for r in top_features) >= 4
    assert top_features[0]["diff"] <= -0.4 and abs(top_features[0]["z"]) >= 3
    assert all(r["diff"] < -0.3 and r["p_b"] >= 0.4 and r["z"] <= -2 for r in comparison.subcircuits[:3])


def test_recovered_subcircuits_have_causal_support_and_false_positives_do_not(
    neo4j_driver: neo4j.Driver, study: dict
) -> None:
    """Causal support (analysis/causal.py) over every mined subcircuit, none filtered: ablating one that
    recovers a state (tests/planted_recovery.py) takes away the answer in >= 90% of its graphs; the false
    positives (template words into generic features, mostly) do not. Measured (threshold 0.15): 11 of the
    13 recovering ones at 0.92 to 1.0 (the other two: a lone layer-1 feature of state 0, 0.31, and one
    without it, 0.1: state 0's answer is spread over three parallel features); 20 of the 21 false
    positives at 0.0 to 0.23, the last at 0.92 (a state-6 circuit holding a template-word feature)."""
    every = _score(neo4j_driver, study, top_n=10_000, min_causal_support=0.0)
    support = {True: [], False: []}
    for row, verdict in every["verdicts"]:
        if verdict is not None:
            support[verdict["recovered"]].append(round(row["causal_support"], 2))
    [run] = neo4j_driver.execute_query(
        "MATCH (r:AnalysisRun {id: 'causal'}) RETURN r.params AS params, r.summary AS summary",
        database_=study["database"],
    ).records
    summary = json.loads(run["summary"])
    print(f"\ncausal support: recovered {sorted(support[True])}, false positives {sorted(support[False])}")
    print(summary)
    assert json.loads(run["params"])["threshold"] == 0.15
    assert summary["graphs_measured"] == summary["graphs"]
    assert summary["subcircuits_measured"] == every["scored"]
    [unmeasured] = neo4j_driver.execute_query(
        "MATCH (:Subcircuit)-[o:OCCURS_IN]->() WHERE o.causal_drop IS NULL RETURN count(o) AS n",
        database_=study["database"],
    ).records
    assert unmeasured["n"] == 0
    high = [v for v in support[True] if v >= 0.9]
    low = [v for v in support[False] if v < 0.5]
    assert len(support[True]) >= 8 and len(high) >= 0.8 * len(support[True])
    assert len(support[False]) >= 10 and len(low) >= 0.9 * len(support[False])


def test_min_causal_support_deletes_and_reranks(neo4j_driver: neo4j.Driver, study: dict) -> None:
    """`--min-causal-support`: the causal step alone deletes the subcircuits measured below it and ranks
    the rest 1..n in their order; re-mining brings them back (done at the end for the other tests)."""
    database = study["database"]
    before = run_query(neo4j_driver, "subcircuits_top", database=database, limit=500)
    kept = [r["key"] for r in before if r["causal_support"] >= 0.5]
    try:
        config = AnalysisConfig(causal=CausalConfig(min_causal_support=0.5))
        [result] = run_analysis(neo4j_driver, steps=["causal"], config=config, database=database)
        after = run_query(neo4j_driver, "subcircuits_top", database=database, limit=500)
        per_graph = result.seconds / result.summary["graphs_measured"]
        print(f"\ncausal step alone: {result.seconds:.1f} s, {per_graph:.3f} s per graph; {result.summary}")
        assert 0 < len(kept) < len(before) and result.summary["dropped"] == len(before) - len(kept)
        assert [r["key"] for r in after] == kept
        assert [r["rank"] for r in after] == list(range(1, len(kept) + 1))
        assert all(r["causal_support"] >= 0.5 for r in after)
    finally:
        run_analysis(neo4j_driver, steps=["subcircuits", "causal"], database=database)
    assert len(run_query(neo4j_driver, "subcircuits_top", database=database, limit=500)) == len(before)
