"""Data for the API and dashboard tests: tiny-model graphs of four tagged prompts and synthetic
planted-circuit graphs, loaded into the real Neo4j server with subcircuits and similarity mined.

The fixtures are module-scoped; a test module uses them with `pytest_plugins = ["tests.api_data"]`.
PYTEST_DONT_REWRITE: it holds no asserts, and test modules import its constants before pytest loads it.
"""

from __future__ import annotations

from pathlib import Path

import neo4j
import pytest

from circuitbase.analysis.similarity import find_similar_graphs
from circuitbase.analysis.subcircuits import mine_subcircuits
from circuitbase.analysis.synthetic import SyntheticConfig, synthetic_graph
from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.models import load_model
from circuitbase.engine.prompts import Prompt
from circuitbase.engine.runner import iter_attribute
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.ingest.loader import ingest_files
from circuitbase.ingest.schema import apply_schema, wipe_database
from circuitbase.ingest.writer import write_graph

FIXTURES = Path(__file__).parent / "fixtures" / "circuit-tracer-format"
TEXTS = ("the cat sat on the mat", "hello world", "a b c d", "the world")
SYNTHETIC = SyntheticConfig(n_graphs=24)


@pytest.fixture(scope="module")
def graph_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Attribution graph files of TEXTS (ids p0..p3, tags 'left' for the first two, 'right' for the rest),
    checked for faithfulness."""
    out = tmp_path_factory.mktemp("api-graphs")
    tiny = load_model(str(FIXTURES / "tiny-llama")), TranscoderSet.load(FIXTURES / "plt-relu")
    prompts = [
        Prompt(text=t, answer=" the", tags=("left" if i < 2 else "right",), dataset="tiny", id=f"p{i}")
        for i, t in enumerate(TEXTS)
    ]
    config = AttributionConfig(max_feature_nodes=64, check_faithfulness=True)
    for _ in iter_attribute(*tiny, prompts, out, config=config, show_progress=False):
        pass
    return sorted(out.glob("*.safetensors"))


@pytest.fixture(scope="module")
def store(neo4j_driver: neo4j.Driver, graph_files: list[Path]) -> neo4j.Driver:
    """The tiny graphs and the synthetic planted-circuit graphs, with subcircuits and similarity."""
    wipe_database(neo4j_driver)
    apply_schema(neo4j_driver)
    ingest_files(neo4j_driver, graph_files)
    for i in range(SYNTHETIC.n_graphs):
        write_graph(neo4j_driver, synthetic_graph(i, config=SYNTHETIC))
    mine_subcircuits(neo4j_driver)
    find_similar_graphs(neo4j_driver)
    return neo4j_driver
