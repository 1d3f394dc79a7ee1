"""Scoring recurring subcircuits against the circuits planted in a toy model (engine/toy.py), one code for
every toy world: the shipped toy and the harder `HARD_WORLD`.
PYTEST_DONT_REWRITE: it holds no asserts.

Ground truth (from `toy.planted_path`): a *chain* prompt (two-hop "capital of city_c is", three-hop
"language of city_c is") has hidden concepts that are not in the prompt: the city's state s, and for
three-hop its region r. Its *value* is the last of them (s for two-hop, r for three-hop): it alone picks
the answer (cap_s, lang_r). A prompt is *taught* unless its city is one of the world's unknown cities
(no fact about them was ever trained, so the model holds no planted path for them).

Concept features, from activations alone (as in tests/test_toy.py): on the trained prompts of a chain
task, in every wording the world has (and once more with fillers where it has them), a transcoder feature
at a *role* (the city's position: "entity"; any other position: its word) fires on a share of the prompts
of each hidden value. Its selectivity for value u is that share on u's prompts minus the share on the
other prompts; it is a *u-feature* when that is >= SELECTIVITY (0.95): it fires on (nearly) every prompt
of u and (nearly) no other.

What is scored: the `top_n` best-ranked subcircuits among those with causal support >= `min_causal_support`
(what `analyze --min-causal-support` keeps, in the same order). A subcircuit is a *chain subcircuit* when
more than half of its occurrences are chain prompts; its task and value are the most common among its
taught chain occurrences. A chain subcircuit of value v **recovers** (task, v) when:
1. at least 90% of its taught chain occurrences are prompts of that task and value v (and it has one);
2. it holds an edge from a v-feature (at a role where it is one, in those occurrences) to v's answer logit;
3. it reaches no other logit;
4. every instance of its Features in those occurrences sits at a role where the Feature fires more on
   v's prompts than on the others' (selectivity > 0; a template-word feature, the same in every prompt,
   carries nothing about v), and none at a role where it is a feature of another value of v's kind.
Every other chain subcircuit is a **false positive**: template words into features that carry no
concept, a concept feature without the edge to its answer, several values mixed, a wrong logit.
*Strictly* recovered additionally requires every instance to be a concept feature (a u-feature of one of
the hidden values of those occurrences, of any hop): no feature shared by several values at all.
Precision = recovered / chain subcircuits among the scored ones (strict precision likewise); recall =
share of the (task, value) pairs that the study's taught chain prompts cover with at least one recovered
subcircuit; answer recall (loose) = share of those pairs' answers that are the target of some edge of a
scored subcircuit. A *full chain* is a recovered three-hop subcircuit holding an edge from a state-s
feature to a region-r feature (s in r): all three hops, not just the last.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import neo4j
import torch

from circuitbase.analysis.queries import run_query
from circuitbase.analysis.run import StepResult, run_analysis
from circuitbase.engine import toy
from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.models import LoadedModel
from circuitbase.engine.prompts import Prompt, prompt_id
from circuitbase.engine.replacement import build_replacement_state
from circuitbase.engine.shelf import ModelShelf
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.ingest.loader import IngestConfig
from circuitbase.ingest.pipeline import ingest_prompts
from circuitbase.ingest.schema import wipe_database

SELECTIVITY = 0.95
PURITY = 0.9
CHAIN_TASKS = ("two_hop", "three_hop")

_INSTANCES = """
UNWIND $keys AS key
MATCH (s:Subcircuit {key: key})-[:OCCURS_IN]->(g:Graph)-[:OF_PROMPT]->(p:Prompt)
RETURN key, g.id AS graph, p.text AS text,
       COLLECT { MATCH (n:GraphNode:FeatureNode {graph: g.id})-[:INSTANCE_OF]->(f:Feature)<-[:HAS_MEMBER]-(s)
                 RETURN [f.key, n.layer, n.position, n.feature] } AS instances
"""


def study_prompt(example: dict[str, Any]) -> Prompt:
    """A toy example dict {prompt, answer, tags, dataset} as a study prompt."""
    return Prompt(
        text=example["prompt"],
        answer=example["answer"],
        tags=tuple(example["tags"]),
        dataset=example["dataset"],
        id=prompt_id(example["prompt"], example["answer"]),
    )


def run_study(
    driver: neo4j.Driver,
    loaded: LoadedModel,
    transcoders: TranscoderSet,
    prompts: list[Prompt],
    graphs_dir: Path,
    *,
    database: str,
    max_feature_nodes: int = 256,
) -> tuple[int, dict[str, StepResult]]:
    """Empty the database, attribute and ingest `prompts` with the model (graphs of at most
    `max_feature_nodes` feature nodes, default 256), run every analysis step (the causal one on this
    model); returns the graphs loaded and each step's result, and prints the seconds each part took."""
    with driver.session(database=database) as session:
        session.run(
            "CALL gds.graph.list() YIELD graphName "
            "CALL gds.graph.drop(graphName, false) YIELD graphName AS dropped RETURN count(dropped)"
        ).consume()
    wipe_database(driver, database=database)
    started = time.perf_counter()
    summary = ingest_prompts(
        driver,
        loaded,
        transcoders,
        prompts,
        graphs_dir,
        attribution=AttributionConfig(max_feature_nodes=max_feature_nodes),
        config=IngestConfig(database=database),
        show_progress=False,
    )
    ingested = time.perf_counter() - started
    shelf = ModelShelf(held=[(loaded, transcoders)])
    results = {r.step: r for r in run_analysis(driver, database=database, models=shelf)}
    seconds = {step: round(r.seconds, 1) for step, r in results.items()}
    print(
        f"\n{len(prompts)} prompts attributed and ingested in {ingested:.1f} s; analysis steps (s): {seconds}"
    )
    return summary.loaded, results


def _role(words: list[str], position: int, entity_position: int) -> str:
    """A prompt position's role: "entity" at the city, else its word (positions count <bos> as 0)."""
    return "entity" if position == entity_position else words[position - 1]


@dataclass
class ConceptFeatures:
    """Selectivity of every (layer, role, feature) for each hidden value of the chain tasks (module doc).

    sel[task][kind][value]: [layers, roles, features] tensor, roles[task] the role names; kind is the
    hop (0: state, 1: region)."""

    roles: dict[str, list[str]] = field(default_factory=dict)
    sel: dict[str, list[dict[str, torch.Tensor]]] = field(default_factory=dict)

    def of(self, task: str, kind: int, value: str, layer: int, role: str, feature: int) -> float:
        """Selectivity for `value` of the feature at (layer, role); 0 for a role never seen."""
        roles = self.roles[task]
        return float(self.sel[task][kind][value][layer, roles.index(role), feature]) if role in roles else 0.0

    def values(self, task: str, kind: int, layer: int, role: str, feature: int) -> set[str]:
        """The hidden values of hop `kind` the feature at (layer, role) is a feature of."""
        return {
            value
            for value in self.sel[task][kind]
            if self.of(task, kind, value, layer, role, feature) >= SELECTIVITY
        }


@torch.no_grad()
def concept_features(
    loaded: LoadedModel, transcoders: TranscoderSet, *, world: toy.ToyWorld, seed: int = 0
) -> ConceptFeatures:
    """Selectivities on the trained chain prompts of `world` (module docstring; fillers drawn from `seed`)."""
    rng = random.Random(seed)
    found = ConceptFeatures()
    for task in CHAIN_TASKS:
        examples = [e for e in toy.training_examples(world=world) if e["tags"][0] == task]
        if world.noisy:
            examples += [toy.with_fillers(e, rng, world=world) for e in examples]
        if not examples:
            continue
        fired, roles_of, hidden = [], [], []
        for example in examples:
            words = example["prompt"].split()
            path = toy.planted_path(example["prompt"], world=world)
            ids = torch.tensor(loaded.tokenizer(example["prompt"]).input_ids, device=loaded.model.device)
            state = build_replacement_state(loaded.model, loaded.adapter, transcoders, ids)
            fired.append(torch.stack(state.activations).gt(0).cpu())  # [layers, positions, features]
            entity = path["inputs"][0]["position"]
            roles_of.append([_role(words, p, entity) for p in range(1, len(words) + 1)])
            hidden.append(path["intermediates"])
        roles = sorted({r for prompt_roles in roles_of for r in prompt_roles})
        n_layers, n_features = fired[0].shape[0], fired[0].shape[2]
        at_role = torch.zeros(len(examples), n_layers, len(roles), n_features)
        present = torch.zeros(len(examples), len(roles))
        for i, (prompt_fired, prompt_roles) in enumerate(zip(fired, roles_of, strict=True)):
            for position, role in enumerate(prompt_roles, start=1):
                r = roles.index(role)
                at_role[i, :, r] = torch.maximum(at_role[i, :, r], prompt_fired[:, position].float())
                present[i, r] = 1.0
        found.roles[task] = roles
        found.sel[task] = []
        for kind in range(len(hidden[0])):
            labels = [h[kind] for h in hidden]
            per_value = {}
            for value in sorted(set(labels)):
                mine = torch.tensor([label == value for label in labels])
                rate_in = at_role[mine].sum(0) / present[mine].sum(0).clamp(min=1)[None, :, None]
                rate_out = at_role[~mine].sum(0) / present[~mine].sum(0).clamp(min=1)[None, :, None]
                per_value[value] = rate_in - rate_out
            found.sel[task].append(per_value)
    return found


@dataclass(frozen=True)
class Occurrence:
    """One graph a subcircuit occurs in: its prompt's planted path and the member instances there."""

    path: dict[str, Any]
    taught: bool
    instances: list[tuple[str, int, str, int]]  # (feature key, layer, role, feature index)


def _occurrences(
    driver: neo4j.Driver, database: str, keys: list[str], world: toy.ToyWorld
) -> dict[str, list[Occurrence]]:
    records, _, _ = driver.execute_query(_INSTANCES, keys=keys, database_=database)
    unknown = {f"city_{c}" for c in world.unknown_cities}
    out: dict[str, list[Occurrence]] = {key: [] for key in keys}
    for r in records:
        path = toy.planted_path(r["text"], world=world)
        words = r["text"].split()
        entity = path["inputs"][0]["position"] if path["task"] in CHAIN_TASKS else -1
        instances = [
            (key, layer, _role(words, pos, entity), index) for key, layer, pos, index in r["instances"]
        ]
        taught = not {i["token"] for i in path["inputs"]} & unknown
        out[r["key"]].append(Occurrence(path=path, taught=taught, instances=instances))
    return out


def _value(path: dict[str, Any]) -> str:
    return path["intermediates"][-1]


def classify(
    row: dict[str, Any],
    occurrences: list[Occurrence],
    concepts: ConceptFeatures,
    token_text: dict[str, str],
) -> dict[str, Any] | None:
    """None for a subcircuit that is not a chain subcircuit; else {task, value, recovered, strict,
    full_chain} (module docstring)."""
    chain = [o for o in occurrences if o.path["task"] in CHAIN_TASKS]
    if len(chain) * 2 <= len(occurrences):
        return None
    taught = [o for o in chain if o.taught]
    verdict = {"task": None, "value": None, "recovered": False, "strict": False, "full_chain": False}
    if not taught:
        return verdict
    (task, value), n = Counter((o.path["task"], _value(o.path)) for o in taught).most_common(1)[0]
    own = [o for o in taught if (o.path["task"], _value(o.path)) == (task, value)]
    last = len(own[0].path["intermediates"]) - 1
    answer = own[0].path["answer"]
    hidden = [{o.path["intermediates"][k] for o in own} for k in range(last + 1)]
    instances = {(key, layer, role, index) for o in own for key, layer, role, index in o.instances}
    kinds_of = {  # feature key -> {(hop, value)} it is a concept feature of, at its roles here
        key: set() for key, *_ in instances
    }
    informative = True
    for key, layer, role, index in instances:
        for kind in range(last + 1):
            kinds_of[key] |= {(kind, u) for u in concepts.values(task, kind, layer, role, index)}
        if concepts.of(task, last, value, layer, role, index) <= 0.0:
            informative = False
    per_instance_concept = all(
        any(u in hidden[k] for k in range(last + 1) for u in concepts.values(task, k, layer, role, index))
        for _, layer, role, index in instances
    )
    other_value = any(u != value for fs in kinds_of.values() for kind, u in fs if kind == last)
    edges = list(zip(row["sources"], row["targets"], strict=True))
    answer_edge = any((last, value) in kinds_of.get(a, ()) and token_text.get(b) == answer for a, b in edges)
    logits = {token_text[b] for b in row["targets"] if b in token_text}
    recovered = (
        n >= PURITY * len(taught) and answer_edge and logits <= {answer} and informative and not other_value
    )
    full_chain = (
        recovered
        and last == 1
        and any(
            (0, s) in kinds_of.get(a, ()) and (1, value) in kinds_of.get(b, ())
            for a, b in edges
            for s in hidden[0]
        )
    )
    return {
        "task": task,
        "value": value,
        "recovered": recovered,
        "strict": recovered and per_instance_concept,
        "full_chain": full_chain,
    }


def score_recovery(
    driver: neo4j.Driver,
    *,
    database: str,
    world: toy.ToyWorld,
    concepts: ConceptFeatures,
    covered: dict[tuple[str, str], str],
    top_n: int = 20,
    min_causal_support: float = 0.5,
) -> dict[str, Any]:
    """Precision, recall and the rest (module docstring) of the scored subcircuits; `covered`: the (task,
    value) pairs of the study's taught chain prompts and their answers (`covered_pairs`)."""
    rows = run_query(driver, "subcircuits_top", database=database, limit=100_000)
    kept = [r for r in rows if (r["causal_support"] or 0.0) >= min_causal_support][:top_n]
    occurrences = _occurrences(driver, database, [r["key"] for r in kept], world)
    records, _, _ = driver.execute_query(
        "MATCH (t:Token) RETURN t.key AS key, t.text AS text", database_=database
    )
    token_text = {r["key"]: r["text"] for r in records}
    verdicts = [(r, classify(r, occurrences[r["key"]], concepts, token_text)) for r in kept]
    chain = [(r, v) for r, v in verdicts if v is not None]
    recovered = {(v["task"], v["value"]) for _, v in chain if v["recovered"]}
    answers = set(covered.values())
    reached = {token_text.get(b) for r in kept for b in r["targets"]} & answers
    return {
        "scored": len(kept),
        "chain": len(chain),
        "recovered": sum(v["recovered"] for _, v in chain),
        "precision": sum(v["recovered"] for _, v in chain) / max(len(chain), 1),
        "strict_precision": sum(v["strict"] for _, v in chain) / max(len(chain), 1),
        "recall": len(recovered & covered.keys()) / max(len(covered), 1),
        "answer_recall": len(reached) / max(len(answers), 1),
        "missed": sorted(covered.keys() - recovered),
        "full_chains": sum(v["full_chain"] for _, v in chain),
        "false_positives": [
            {"rank": r["rank"], "task": v["task"], "value": v["value"], "causal_support": r["causal_support"]}
            for r, v in chain
            if not v["recovered"]
        ],
        "verdicts": verdicts,
    }


def covered_pairs(prompts: list[str], world: toy.ToyWorld) -> dict[tuple[str, str], str]:
    """(task, value) -> answer, for the taught chain prompts among `prompts`."""
    unknown = {f"city_{c}" for c in world.unknown_cities}
    pairs = {}
    for text in prompts:
        path = toy.planted_path(text, world=world)
        if path["task"] in CHAIN_TASKS and not {i["token"] for i in path["inputs"]} & unknown:
            pairs[(path["task"], _value(path))] = path["answer"]
    return pairs
