"""Causal support of recurring subcircuits: does ablating one on the real model take away its graphs' answers?

For every occurrence of a `Subcircuit` (each graph it `OCCURS_IN`):

1. Ablate its features in that graph: every kept FeatureNode of the graph that is an instance of one of
   the subcircuit's member Features (at any position), zeroed together on the real model the graph was
   made with (`engine.ablation.ablation_drops`: their decoder contributions leave the residual stream at
   their layers, the error terms stay as recorded, later MLPs and attention respond). The prompt is
   tokenised as attribution does; a graph whose stored prompt has another token count is skipped.
2. Measure what happens to the graph's top logit (its LogitNode of highest probability, the answer):
   its **lead**, its logit minus the largest logit of any other token, before and after.
   `OCCURS_IN.causal_logit_drop` is the lead's drop in logit units, `OCCURS_IN.causal_drop` that drop as
   a share of the clean lead: 0 = no effect, 1 = the answer ties with the next best token, above 1 = the
   answer changes, negative = the ablation made the answer more certain.
3. An occurrence **matters** when `causal_drop >= threshold` (default 0.15: the ablation takes away at
   least 15% of the answer's lead). `Subcircuit.causal_support` is the share of its measured occurrences
   that matter (null when none was measured), `Subcircuit.causal_occurrences` how many were measured.
4. With `min_causal_support` > 0, the subcircuits measured below it are deleted and the others re-ranked
   1..n in their order (unmeasured ones are kept); re-mine (`analyze --step subcircuits`) to get them back.

A graph's model and transcoder set are found by the names it records (`engine.shelf.ModelShelf`: the
sources given, then the toy model shipped in the package); the graphs of a model none of them has are
skipped and counted. The parameters are recorded on `(:AnalysisRun {id: 'causal'})`, and a run first
removes the previous run's values. Cost: one forward of the model per graph plus one per occurrence.

Why the lead, not the logit: a feature that lifts every answer of a kind (each capital after "capital of
... is") moves the top logit but not which answer wins, and the template words of a prompt feed such
features; the lead moves only for what picks this answer. Why a share: prompts and models differ in how
far ahead their answers are. Why 0.15: it was chosen on the toy study (tests/test_analysis_toy.py) before
the miner joined features at their answer: subcircuits holding a planted two-hop path kept a causal
support >= 0.93 for thresholds 0.05 to 0.2, and template words into generic features stayed <= 0.23 from
0.15 up. With the current miner, at 0.15, 11 of the 13 subcircuits that recover a planted state circuit
score 0.92 to 1.0 and 20 of the 21 false positives score below 0.5.
Why every kept instance of a member Feature: that is the subcircuit in that graph as its nodes show it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import neo4j

from circuitbase.analysis.gds import AnalysisError, finish_run, record_run
from circuitbase.engine.shelf import ModelShelf, ModelSource, with_shipped_toy
from circuitbase.progress import Progress

if TYPE_CHECKING:
    from circuitbase.engine.models import LoadedModel
    from circuitbase.engine.transcoders import TranscoderSet

STEP = "causal"

_CLEAR = """
MATCH (s:Subcircuit)
REMOVE s.causal_support, s.causal_occurrences
WITH s
MATCH (s)-[o:OCCURS_IN]->()
REMOVE o.causal_drop, o.causal_logit_drop
"""
_GRAPHS = """
MATCH (:Subcircuit)-[:OCCURS_IN]->(g:Graph)
WITH DISTINCT g
OPTIONAL MATCH (g)-[:OF_PROMPT]->(p:Prompt)
RETURN g.id AS graph, g.model AS model, g.transcoder_set AS transcoder_set, p.text AS text,
       size(p.tokens) AS n_tokens,
       head(COLLECT { MATCH (l:GraphNode:LogitNode {graph: g.id})
                      RETURN l.token_id ORDER BY l.probability DESC }) AS top_token
ORDER BY model, transcoder_set, graph
"""
# (graph, subcircuit, [layer, position, feature] of each member node): the nodes the step ablates; the API's
# `memberNodes` list the same (tests/test_api_causal.py compares them)
OCCURRENCE_FEATURES = """
UNWIND $graphs AS graph
MATCH (n:GraphNode:FeatureNode {graph: graph})-[:INSTANCE_OF]->(:Feature)<-[:HAS_MEMBER]-(s:Subcircuit)
WHERE EXISTS { (s)-[:OCCURS_IN]->(:Graph {id: graph}) }
RETURN graph, s.key AS subcircuit, collect([n.layer, n.position, n.feature]) AS features
"""
_WRITE = """
UNWIND $rows AS r
MATCH (:Subcircuit {key: r.subcircuit})-[o:OCCURS_IN]->(:Graph {id: r.graph})
SET o.causal_drop = r.share, o.causal_logit_drop = r.drop
"""
_SUPPORT = """
MATCH (s:Subcircuit)
OPTIONAL MATCH (s)-[o:OCCURS_IN]->()
WHERE o.causal_drop IS NOT NULL
WITH s, count(o) AS measured, count(CASE WHEN o.causal_drop >= $threshold THEN 1 END) AS matter
SET s.causal_occurrences = measured,
    s.causal_support = CASE WHEN measured > 0 THEN toFloat(matter) / measured END
RETURN count(s.causal_support) AS subcircuits, sum(measured) AS occurrences, sum(matter) AS matter
"""
_FILTER = """
MATCH (s:Subcircuit)
WHERE s.causal_support < $min_causal_support
DETACH DELETE s
RETURN count(*) AS dropped
"""
_RERANK = """
MATCH (s:Subcircuit)
WITH s ORDER BY s.rank
WITH collect(s) AS kept
UNWIND range(0, size(kept) - 1) AS i
WITH kept[i] AS s, i
SET s.rank = i + 1
"""


@dataclass(frozen=True)
class CausalConfig:
    """threshold: least causal_drop of an occurrence that matters (default 0.15; in (0, 1]).
    min_causal_support: subcircuits measured below it are deleted (default 0.0: none; in [0, 1]).
    freeze_attention: replay the clean attention patterns in the ablated runs (default False).
    sources: models to load for the graphs' names, before the shipped toy (default none).
    device: 'auto', 'cpu' or 'cuda' (default 'auto'). batch: graphs per read and write (default 100)."""

    threshold: float = 0.15
    min_causal_support: float = 0.0
    freeze_attention: bool = False
    sources: tuple[ModelSource, ...] = ()
    device: str = "auto"
    batch: int = 100

    def check(self) -> None:
        """AnalysisError naming the first setting out of range."""
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold <= 1.0):
            raise AnalysisError(f"causal threshold must be in (0, 1], got {self.threshold}")
        if not 0.0 <= self.min_causal_support <= 1.0:
            raise AnalysisError(f"min causal support must be in [0, 1], got {self.min_causal_support}")
        if self.batch < 1:
            raise AnalysisError(f"causal batch must be >= 1, got {self.batch}")

    def model_shelf(self) -> ModelShelf:
        """A shelf of `sources`, then the shipped toy, on `device` (each model loaded on first need)."""
        return ModelShelf(sources=with_shipped_toy(self.sources), device=self.device)


def _measure_graph(
    graph: dict[str, Any],
    occurrences: dict[str, list[list[int]]],
    model: tuple[LoadedModel, TranscoderSet],
    config: CausalConfig,
) -> tuple[str, list[dict[str, Any]]]:
    """('measured', one row per occurrence), or ('tokens_differ', []) when the prompt's token count is
    not the stored one; `model` is the (loaded model, transcoder set) the graph was made with."""
    from circuitbase.engine.ablation import ablation_drops
    from circuitbase.engine.prompts import prompt_token_ids

    loaded, transcoders = model
    ids = prompt_token_ids(loaded.tokenizer, graph["text"]) if graph["text"] is not None else []
    if len(ids) != graph["n_tokens"]:
        return "tokens_differ", []
    keys = sorted(occurrences)
    result = ablation_drops(
        loaded.model,
        loaded.adapter,
        transcoders,
        ids,
        [[tuple(f) for f in occurrences[key]] for key in keys],
        token=graph["top_token"],
        freeze_attention=config.freeze_attention,
    )
    rows = [
        {"subcircuit": key, "graph": graph["graph"], "drop": drop, "share": share}
        for key, drop, share in zip(keys, result.drops(), result.shares(), strict=True)
    ]
    return "measured", rows


def measure_causal_support(
    driver: neo4j.Driver,
    *,
    config: CausalConfig | None = None,
    database: str = "neo4j",
    models: ModelShelf | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the whole step (module docstring); returns the counts of graphs, occurrences and subcircuits.

    config: default CausalConfig(). models: the shelf the graphs' models are found on (default: one
    loading `config.sources`, then the shipped toy). progress: shows the graphs done (default none)."""
    config = config or CausalConfig()
    config.check()
    record_run(driver, STEP, asdict(config), database=database)
    driver.execute_query(_CLEAR, database_=database)
    graphs = [r.data() for r in driver.execute_query(_GRAPHS, database_=database).records]
    shelf = models or config.model_shelf()
    counts = {"measured": 0, "no_model": 0, "tokens_differ": 0}
    for start in range(0, len(graphs), config.batch):
        chunk = graphs[start : start + config.batch]
        found = {g["graph"]: shelf.find(g["model"], g["transcoder_set"]) for g in chunk}
        occurrences: dict[str, dict[str, list[list[int]]]] = defaultdict(dict)
        ids = [graph for graph, model in found.items() if model is not None]
        for r in driver.execute_query(OCCURRENCE_FEATURES, graphs=ids, database_=database).records:
            occurrences[r["graph"]][r["subcircuit"]] = r["features"]
        rows: list[dict[str, Any]] = []
        for done, graph in enumerate(chunk, start=start + 1):
            model = found[graph["graph"]]
            outcome, measured = (
                _measure_graph(graph, occurrences[graph["graph"]], model, config)
                if model is not None
                else ("no_model", [])
            )
            counts[outcome] += 1
            rows += measured
            if progress is not None:
                progress.update(info=f"causal: {done}/{len(graphs)} graphs, {counts['measured']} measured")
        if rows:
            driver.execute_query(_WRITE, rows=rows, database_=database)
    [support] = driver.execute_query(_SUPPORT, threshold=config.threshold, database_=database).records
    dropped = 0
    if config.min_causal_support > 0.0:
        [row] = driver.execute_query(
            _FILTER, min_causal_support=config.min_causal_support, database_=database
        ).records
        dropped = int(row["dropped"])
        if dropped:
            driver.execute_query(_RERANK, database_=database)
    result = {
        "threshold": config.threshold,
        "graphs": len(graphs),
        "graphs_measured": counts["measured"],
        "graphs_without_model": counts["no_model"],
        "graphs_tokens_differ": counts["tokens_differ"],
        "occurrences_measured": int(support["occurrences"] or 0),
        "occurrences_mattering": int(support["matter"] or 0),
        "subcircuits_measured": int(support["subcircuits"]),
        "dropped": dropped,
    }
    finish_run(driver, STEP, result, database=database)
    return result
