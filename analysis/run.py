"""`analyze`: run the analysis steps in order, with a progress display, and summarise what each wrote.

Every step replaces its own earlier results (delete-and-rewrite) and records its parameters on its
`(:AnalysisRun {id: step})` node, so running twice leaves one set of results.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import neo4j

from circuitbase.analysis.causal import CausalConfig, measure_causal_support
from circuitbase.analysis.communities import CommunityConfig, find_supernodes
from circuitbase.analysis.faithfulness import FaithfulnessStepConfig, check_faithfulness
from circuitbase.analysis.gds import AnalysisError
from circuitbase.analysis.hubs import HubConfig, find_hubs
from circuitbase.analysis.similarity import SimilarityConfig, find_similar_graphs
from circuitbase.analysis.subcircuits import SubcircuitConfig, mine_subcircuits
from circuitbase.engine.shelf import ModelShelf
from circuitbase.progress import Progress

STEPS = ("faithfulness", "communities", "subcircuits", "causal", "similarity", "hubs")
MODEL_STEPS = ("faithfulness", "causal")  # the steps that run the graphs' models


@dataclass(frozen=True)
class AnalysisConfig:
    """The settings of every step (each defaults to its own config's defaults)."""

    faithfulness: FaithfulnessStepConfig = field(default_factory=FaithfulnessStepConfig)
    communities: CommunityConfig = field(default_factory=CommunityConfig)
    subcircuits: SubcircuitConfig = field(default_factory=SubcircuitConfig)
    causal: CausalConfig = field(default_factory=CausalConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    hubs: HubConfig = field(default_factory=HubConfig)


@dataclass(frozen=True)
class StepResult:
    step: str
    seconds: float
    summary: dict[str, Any]


def resolve_steps(step: str) -> list[str]:
    """`all` -> every step in order; otherwise the one named step."""
    if step == "all":
        return list(STEPS)
    if step not in STEPS:
        raise AnalysisError(f"unknown analysis step {step!r}; choose one of {', '.join(('all', *STEPS))}")
    return [step]


def run_step(
    driver: neo4j.Driver,
    step: str,
    *,
    config: AnalysisConfig,
    database: str,
    models: ModelShelf | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run one step with its settings from `config`; returns its summary. models: where the faithfulness
    and causal steps find the graphs' models (default: the causal config's sources, then the shipped toy).
    progress: receives their progress per graph (default none)."""
    if step == "faithfulness":
        return check_faithfulness(
            driver,
            models=models or config.causal.model_shelf(),
            config=config.faithfulness,
            database=database,
            progress=progress,
        )
    if step == "communities":
        return find_supernodes(driver, config=config.communities, database=database)
    if step == "subcircuits":
        return mine_subcircuits(driver, config=config.subcircuits, database=database)
    if step == "causal":
        return measure_causal_support(
            driver, config=config.causal, database=database, models=models, progress=progress
        )
    if step == "similarity":
        return find_similar_graphs(driver, config=config.similarity, database=database)
    if step == "hubs":
        return find_hubs(driver, config=config.hubs, database=database)
    raise AnalysisError(f"unknown analysis step {step!r}; choose from {', '.join(STEPS)}")


def run_analysis(
    driver: neo4j.Driver,
    *,
    steps: Sequence[str] = STEPS,
    config: AnalysisConfig | None = None,
    database: str = "neo4j",
    show_progress: bool = False,
    models: ModelShelf | None = None,
) -> list[StepResult]:
    """Run `steps` (default all, in STEPS order) and return each one's summary and seconds. models: where
    the faithfulness and causal steps find the graphs' models (default: `config.causal.model_shelf()`, one
    shelf shared by both)."""
    config = config or AnalysisConfig()
    if models is None and set(MODEL_STEPS) & set(steps):
        models = config.causal.model_shelf()
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise AnalysisError(f"unknown analysis steps {unknown}; choose from {', '.join(STEPS)}")
    results: list[StepResult] = []
    with Progress("analyze", total=len(steps), unit="steps", enabled=show_progress) as progress:
        for step in steps:
            progress.update(info=f"running {step}")
            started = time.perf_counter()
            summary = run_step(
                driver, step, config=config, database=database, models=models, progress=progress
            )
            results.append(StepResult(step, time.perf_counter() - started, summary))
            progress.advance(info=f"{step} done in {results[-1].seconds:.1f}s")
    return results
