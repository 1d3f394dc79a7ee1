"""The toy demo's data for the API and dashboard tests: the prompts `circuitbase demo --prompts 12` writes
(12 drawn toy prompts and every prompt the toy model was never taught), attributed with the shipped toy
model, ingested into the real Neo4j server and analysed with every step, causal support measured on that
model.

The fixture is module-scoped; a test module uses it with `pytest_plugins = ["tests.toy_demo_data"]`.
`shipped_toy()` loads the shipped toy model and transcoders, for tests that run them beside the data.
PYTEST_DONT_REWRITE: it holds no asserts.
"""

from __future__ import annotations

import neo4j
import pytest

from circuitbase.commands.demo import write_demo_prompts
from circuitbase.engine import toy
from circuitbase.engine.models import LoadedModel, load_model
from circuitbase.engine.prompts import read_prompts
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.settings import Neo4jSettings
from tests.planted_recovery import run_study

DEMO_PROMPTS = 12


def shipped_toy() -> tuple[LoadedModel, TranscoderSet]:
    """The shipped toy model and its transcoder set, freshly loaded on the CPU."""
    model_dir, set_dir = toy.shipped_paths()
    return load_model(str(model_dir)), TranscoderSet.load(set_dir)


@pytest.fixture(scope="module")
def toy_demo(
    neo4j_driver: neo4j.Driver, neo4j_settings: Neo4jSettings, tmp_path_factory: pytest.TempPathFactory
) -> neo4j.Driver:
    """The emptied database holding the toy demo's graphs and every analysis step's results."""
    loaded, transcoders = shipped_toy()
    work = tmp_path_factory.mktemp("toy-demo")
    prompts = read_prompts(write_demo_prompts(work / "prompts.jsonl", "toy", DEMO_PROMPTS)).prompts
    run_study(neo4j_driver, loaded, transcoders, prompts, work / "graphs", database=neo4j_settings.database)
    return neo4j_driver
