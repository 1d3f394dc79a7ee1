"""The analysis layer on the toy model with planted circuits: do the top recurring subcircuits recover them?

Study: every two-hop prompt ("capital of city_c is", all 96 cities: trained, compose, unknown), the
five held-out and some trained arithmetic prompts, and a few copy prompts, attributed and ingested into
Neo4j, then `run_analysis`.

What counts as planted (from `toy.planted_path` and `toy.ground_truth`), for two-hop prompts:
1. The state-s features: transcoder features selective for state s on the trained two-hop prompts
   (identified from activations alone, as in tests/test_toy.py).
2. The planted feature-level edges of state s: a question token of a state-s prompt (its city token, or
   one of the template words "capital", "of", "is") -> a state-s feature; state-s feature -> state-s
   feature; state-s feature -> the answer logit cap_s; a question token -> cap_s.
3. A subcircuit is *on a planted path* when its two-hop occurrences are all of one state s and every
   edge is a planted edge of s; it *recovers* state s when it also holds a state-s feature -> cap_s edge.
Precision = share of the top-N two-hop subcircuits (most of their occurrences two-hop) on a planted
path; recall = share of the 8 states recovered by at least one top-N subcircuit; answer recall (loose) =
share of the 8 capital logits that are the target of some edge of a top-N subcircuit.

Measured (N = 40): precision 0.625, recall 0.75, answer recall 1.0 among 48 written (all 48: precision
0.52, recall 0.75). Before specificity, feature-only connectivity, the start-token rule and the ranking
by total influence (support first; cypher/README.md, "Recurrence"): precision 0.025, recall 0.0, answer
recall 0.375 among 144, where template -> generic-feature edges shared by all states swallowed the
state-specific ones and <bos> joined every subcircuit. Recurrence still cannot see the city token (each
city is in one prompt, so its edges never recur). The misses: states 1 and 2, whose closures hold features
specific to their graphs by the data (kept in 13 to 15 graphs, 10 to 12 of them that state's) that the
activations do not count as selective; and template -> generic-feature fragments still rank in the top 40.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import neo4j
import pytest

from circuitbase.analysis.compare import Split, compare
from circuitbase.analysis.queries import run_query
from circuitbase.analysis.run import run_analysis
from circuitbase.engine import toy
from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.models import load_model
from circuitbase.engine.prompts import Prompt, prompt_id
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.ingest.loader import IngestConfig
from circuitbase.ingest.pipeline import ingest_prompts
from circuitbase.ingest.schema import wipe_database
from circuitbase.settings import Neo4jSettings
from tests.test_toy import state_features

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]

TOP_N = 40
TEMPLATE = ("capital", "of", "is")
UNTAUGHT = {"unknown", "held_out"}


def _study_prompts() -> list[Prompt]:
    fixed = toy.fixed_examples()
    two_hop = [e for e in fixed if e["tags"][0] == "two_hop"]
    arithmetic = [e for e in fixed if e["tags"][0] == "arithmetic"]
    held_out = [e for e in arithmetic if "held_out" in e["tags"]]
    trained = [e for e in arithmetic if "trained" in e["tags"]][::5]
    copies = [p for p in toy.toy_prompts(40, seed=5) if p["tags"][0] == "copy"]
    return [
        Prompt(text=e["prompt"], answer=e["answer"], tags=tuple(e["tags"]), dataset=e["dataset"],
               id=prompt_id(e["prompt"], e["answer"]))
        for e in [*two_hop, *held_out, *trained, *copies]
    ]  # fmt: skip


@pytest.fixture(scope="module")
def study(
    neo4j_driver: neo4j.Driver, neo4j_settings: Neo4jSettings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Ingest + analyse the study on an emptied database; returns what the tests measure against."""
    database = neo4j_settings.database
    with neo4j_driver.session(database=database) as session:
        session.run(
            "CALL gds.graph.list() YIELD graphName "
            "CALL gds.graph.drop(graphName, false) YIELD graphName AS dropped RETURN count(dropped)"
        ).consume()
    wipe_database(neo4j_driver, database=database)
    model_dir, tc_dir = toy.shipped_paths()
    loaded = load_model(str(model_dir))
    transcoders = TranscoderSet.load(tc_dir)
    prompts = _study_prompts()
    summary = ingest_prompts(
        neo4j_driver,
        loaded,
        transcoders,
        prompts,
        Path(tmp_path_factory.mktemp("toy_graphs")),
        attribution=AttributionConfig(max_feature_nodes=256),
        config=IngestConfig(database=database),
        show_progress=False,
    )
    assert summary.loaded == len(prompts)
    results = {r.step: r for r in run_analysis(neo4j_driver, database=database)}
    print(f"\nanalysis steps (s): { {step: r.seconds for step, r in results.items()} }")
    features = {
        s: {f"{transcoders.name}/{layer}/{index}" for layer, _, index in found}
        for s, found in state_features(loaded, transcoders).items()
    }
    records, _, _ = neo4j_driver.execute_query(
        "MATCH (t:Token) RETURN t.key AS key, t.text AS text", database_=database
    )
    return {
        "database": database,
        "subcircuits": results["subcircuits"].summary,
        "state_features": features,
        "token_text": {r["key"]: r["text"] for r in records},
    }


def _occurrence_prompts(driver: neo4j.Driver, database: str, keys: list[str]) -> dict[str, list[str]]:
    records, _, _ = driver.execute_query(
        "UNWIND $keys AS key MATCH (s:Subcircuit {key: key})-[:OCCURS_IN]->(:Graph)-[:OF_PROMPT]->(p:Prompt) "
        "RETURN key, collect(p.text) AS texts",
        {"keys": keys},
        database_=database,
    )
    return {r["key"]: r["texts"] for r in records}


def _measure(rows: list[dict[str, Any]], occurrences: dict[str, list[str]], study: dict[str, Any]) -> dict:
    """Precision and recall of `rows` (top subcircuits) against the planted two-hop paths (module doc)."""
    text, features = study["token_text"], study["state_features"]
    template = {k for k, t in text.items() if t in TEMPLATE}
    planted: dict[int, set[tuple[str, str]]] = {}
    for s, fs in features.items():
        inputs = template | {
            k for k, t in text.items() if t.startswith("city_") and toy.state_of(int(t[5:])) == s
        }
        answer = {k for k, t in text.items() if t == f"cap_{s}"}
        planted[s] = {(a, b) for a in inputs | fs for b in fs | answer if a != b}
    two_hop, on_path, states = 0, 0, set()
    for row in rows:
        tasks = Counter(toy.planted_path(t)["task"] for t in occurrences[row["key"]])
        if tasks["two_hop"] * 2 <= sum(tasks.values()):
            continue
        two_hop += 1
        edges = set(zip(row["sources"], row["targets"], strict=True))
        for s, fs in features.items():
            if edges <= planted[s]:
                on_path += 1
                states.update(s for a, b in edges if a in fs and text.get(b) == f"cap_{s}")
                break
    answers = {
        text[b] for row in rows for b in row["targets"] if text.get(b, "").startswith("cap_")
    }  # capital logits reached by any top subcircuit (loose recall)
    return {
        "two_hop": two_hop,
        "precision": on_path / max(two_hop, 1),
        "recall": len(states) / toy.N_STATES,
        "answer_recall": len(answers) / toy.N_STATES,
    }


def test_top_subcircuits_recover_the_planted_two_hop_paths(neo4j_driver: neo4j.Driver, study: dict) -> None:
    database = study["database"]
    rows = run_query(neo4j_driver, "subcircuits_top", database=database, limit=500)
    occurrences = _occurrence_prompts(neo4j_driver, database, [r["key"] for r in rows])
    top = _measure(rows[:TOP_N], occurrences, study)
    every = _measure(rows, occurrences, study)
    print(f"\n{study['subcircuits']}\ntop {TOP_N}: {top}\nall {len(rows)}: {every}")
    assert top["two_hop"] >= 0.9 * TOP_N  # the two-hop prompts dominate the recurring structure
    assert top["precision"] >= 0.55 and top["recall"] >= 0.75 and top["answer_recall"] == 1.0
    assert every["recall"] == top["recall"] and every["precision"] >= 0.45
    # <bos>, at position 0 of every prompt, is the one start token: none of its edges is mined
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
