"""Planted-circuit recovery on the harder toy world, which the miner was never tuned on.

Model: tests/fixtures/toy_hard, `toy.build_toy(DIR, config=toy.HARD_CONFIG)` from seed 0 (engine/toy.py:
`HARD_WORLD`; its metrics.json records the accuracies and transcoder quality): 3 layers, eight tasks
(two-hop capitals, three-hop languages city -> state -> region -> language, one-hop facts of cities,
states and regions, city sizes, copying, sums), city sizes as a distractor that every city task can
read, questions in three wordings and filler words ("um", "so", "well", "please") put at random in 15%
of the gaps of every prompt.

Study: for every state, TWO_HOP taught cities asked for their capital and THREE_HOP for their language
(random wording, fillers drawn), a few unknown cities and distractor prompts (sizes, one-hop facts,
sums), attributed, ingested and analysed with the defaults, then scored by tests/planted_recovery.py
exactly as the shipped toy is (top 20 among causal support >= 0.5).

Measured: `test_hard_world_recovery`'s docstring (figures below the 0.9 target, and why).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import neo4j
import pytest
import torch

from circuitbase.engine import toy
from circuitbase.engine.models import load_model
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.settings import Neo4jSettings
from tests.planted_recovery import concept_features, covered_pairs, run_study, score_recovery, study_prompt

HARD_DIR = Path(__file__).parent / "fixtures" / "toy_hard"
WORLD = toy.HARD_WORLD
TWO_HOP, THREE_HOP = 8, 8  # taught cities per state asked each question
TOP_N, MIN_CAUSAL_SUPPORT = 20, 0.5


def _study_examples(seed: int = 0) -> list[dict[str, Any]]:
    """The study's prompts (module docstring), drawn with `seed`."""
    rng = random.Random(seed)
    taught = [c for c in range(WORLD.n_cities) if c not in WORLD.unknown_cities]
    by_state = {s: [c for c in taught if toy.state_of(c, world=WORLD) == s] for s in range(WORLD.n_states)}
    fixed = toy.fixed_examples(world=WORLD)

    def asked(task: str, city: int) -> dict[str, Any]:
        wordings = [e for e in fixed if e["tags"][0] == task and f"city_{city} " in f"{e['prompt']} "]
        return rng.choice(wordings)

    chain = [
        asked(task, city)
        for s in range(WORLD.n_states)
        for task, n in (("two_hop", TWO_HOP), ("three_hop", THREE_HOP))
        for city in rng.sample(by_state[s], n)
    ]
    unknown = [asked(task, c) for task in ("two_hop", "three_hop") for c in WORLD.unknown_cities[:2]]
    distractors = [
        e
        for task in ("size", "one_hop", "arithmetic")
        for e in rng.sample([e for e in fixed if e["tags"] == [task, "trained"]], 4)
    ]
    return [toy.with_fillers(e, rng, world=WORLD) for e in [*chain, *unknown, *distractors]]


def test_hard_model_learned_its_tasks() -> None:
    """The shipped fixture: the taught tasks right, the three-hop questions of compose cities (never asked
    in training) answered by composing, the unknown cities wrong, and the fixture's files in place."""
    metrics = json.loads((HARD_DIR / "metrics.json").read_text())
    accuracy = {k: v["accuracy"] for k, v in metrics["model"]["accuracy"].items()}
    print(accuracy)
    for group in ("two_hop/trained", "three_hop/trained", "one_hop/trained", "size/trained", "copy/trained"):
        assert accuracy[group] >= 0.9, group
    assert accuracy["two_hop/unknown"] <= 0.5 and accuracy["three_hop/unknown"] <= 0.6
    assert metrics["config"]["world"]["name"] == WORLD.name and metrics["config"]["n_layers"] == 3
    model_dir, tc_dir = toy.shipped_paths(HARD_DIR, world=WORLD)
    assert (model_dir / "config.json").is_file() and (tc_dir / "config.yaml").is_file()


def test_hard_prompts_follow_their_planted_paths() -> None:
    """Drawn prompts of the hard world (fillers, wordings) parse back to their planted paths, and the
    fixture model answers the taught ones."""
    prompts = toy.toy_prompts(120, seed=3, world=WORLD)
    assert {p["tags"][0] for p in prompts} == {
        "two_hop",
        "one_hop",
        "copy",
        "arithmetic",
        "three_hop",
        "size",
    }
    assert any(set(p["prompt"].split()) & set(WORLD.fillers) for p in prompts)
    model_dir, _ = toy.shipped_paths(HARD_DIR, world=WORLD)
    loaded = load_model(str(model_dir))
    right = taught = 0
    for p in prompts:
        path = toy.planted_path(p["prompt"], world=WORLD)
        words = p["prompt"].split()
        assert path["answer"] == p["answer"] and path["task"] == p["tags"][0]
        assert all(words[i["position"] - 1] == i["token"] for i in path["inputs"])
        if path["task"] == "three_hop":
            state, region = (int(v.rsplit("_", 1)[1]) for v in path["intermediates"])
            assert region == toy.region_of(state, world=WORLD) and p["answer"] == f"lang_{region}"
        if "unknown" not in p["tags"] and "held_out" not in p["tags"]:
            ids = torch.tensor([loaded.tokenizer(p["prompt"]).input_ids], device=loaded.model.device)
            top = int(loaded.model(ids).logits[0, -1].argmax())
            taught += 1
            right += loaded.tokenizer.convert_ids_to_tokens(top) == p["answer"]
    assert right >= 0.95 * taught


@pytest.fixture(scope="module")
def study(
    neo4j_driver: neo4j.Driver, neo4j_settings: Neo4jSettings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    database = neo4j_settings.database
    model_dir, tc_dir = toy.shipped_paths(HARD_DIR, world=WORLD)
    loaded, transcoders = load_model(str(model_dir)), TranscoderSet.load(tc_dir)
    examples = _study_examples()
    loaded_graphs, results = run_study(
        neo4j_driver,
        loaded,
        transcoders,
        [study_prompt(e) for e in examples],
        tmp_path_factory.mktemp("hard_graphs"),
        database=database,
    )
    assert loaded_graphs == len(examples)
    return {
        "database": database,
        "subcircuits": results["subcircuits"].summary,
        "causal": results["causal"].summary,
        "concepts": concept_features(loaded, transcoders, world=WORLD),
        "covered": covered_pairs([e["prompt"] for e in examples], WORLD),
    }


def _score(driver: neo4j.Driver, study: dict[str, Any], **limits: Any) -> dict[str, Any]:
    return score_recovery(
        driver,
        database=study["database"],
        world=WORLD,
        concepts=study["concepts"],
        covered=study["covered"],
        **limits,
    )


@pytest.mark.neo4j
@pytest.mark.slow
def test_hard_world_recovery(neo4j_driver: neo4j.Driver, study: dict) -> None:
    """Scored as the shipped toy is; the bounds are what was measured, not the 0.9 target.

    Measured (144 prompts, k = 8; 48 subcircuits mined, 26 with causal support >= 0.5): top 20:
    precision 0.90 (18 of 20), recall 0.67 (8 of the 12 pairs: all 4 regions' language circuits, 4 of
    the 8 states' capital ones), answer recall 0.67. All 26 kept: precision 0.88, recall 1.0, answer
    recall 1.0. Where it falls short and why:
    - recall in the top 20: the ranking (total influence) puts redundant variants of the same circuit
      first: a region's language circuit occurs in both of its states' prompts (16) and the circuits
      of one state in 8, so 12 of the top 13 are language circuits, several per region (overlapping
      feature sets of support 16, 14, 12: more than the 10% that dropping covered closures merges); the
      capital circuits of states 0, 1, 6 and 7 rank 22 to 36.
    - precision: the false positives are a language circuit that reaches lang_3 from state-3 features
      alone (the region hop folded into state features, so no region feature is on it), a state-2
      fragment without its answer edge, and a state-7 feature group shared by the capital and the
      language questions (both tasks, no answer edge).
    - hops: the miner finds full three-hop chains (a state feature into a region feature into the
      language; 2 among all mined), but each with causal support <= 0.11: the state's answer is carried
      by several parallel routes, so ablating one chain leaves the answer; none survives the filter.
    """
    top = _score(neo4j_driver, study, top_n=TOP_N, min_causal_support=MIN_CAUSAL_SUPPORT)
    kept = _score(neo4j_driver, study, top_n=10_000, min_causal_support=MIN_CAUSAL_SUPPORT)
    every = _score(neo4j_driver, study, top_n=10_000, min_causal_support=0.0)
    print(f"\n{study['subcircuits']}\n{study['causal']}")
    for name, scored in (("top", top), ("all kept", kept), ("all, no causal filter", every)):
        print(f"{name}: { {k: v for k, v in scored.items() if k != 'verdicts'} }")
    assert len(study["covered"]) == WORLD.n_states + WORLD.n_regions
    assert top["chain"] == top["scored"] == TOP_N
    assert top["precision"] >= 0.85 and top["recall"] >= 0.65 and top["answer_recall"] >= 0.65
    assert kept["precision"] >= 0.85 and kept["recall"] >= 0.9 and kept["answer_recall"] == 1.0
    assert every["full_chains"] >= 1 and every["precision"] < kept["precision"]
