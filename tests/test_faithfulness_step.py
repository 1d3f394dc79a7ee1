"""The analysis step that checks the faithfulness of loaded graphs from their files, on the real toy model."""

from __future__ import annotations

from pathlib import Path

import neo4j
import pytest

from circuitbase.analysis.faithfulness import FaithfulnessStepConfig, check_faithfulness
from circuitbase.analysis.gds import AnalysisError
from circuitbase.engine.faithfulness import measure_faithfulness
from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.shelf import ModelShelf
from tests.toy_demo_data import shipped_toy

pytestmark = pytest.mark.neo4j
pytest_plugins = ["tests.toy_demo_data"]  # the toy_demo fixture

SCORES = ("faithfulness", "faithfulness_correlation", "logit_share_measured", "logit_share_predicted")
_GRAPHS = "MATCH (g:Graph) RETURN g.id AS id, g.path AS path, g {.*} AS g ORDER BY id"


def test_analyze_scores_every_graph_as_the_engine_check_does(toy_demo: neo4j.Driver) -> None:
    """The demo's graphs are attributed without the check; the step (run by `analyze`) scored them all,
    with the values `measure_faithfulness` gives on the graph file."""
    graphs = toy_demo.execute_query(_GRAPHS).records
    assert graphs and all(r["g"].get("faithfulness") is not None for r in graphs)
    loaded, transcoders = shipped_toy()
    for record in graphs[:3]:
        graph = AttributionGraph.load(record["path"])
        scores = measure_faithfulness(loaded.model, loaded.adapter, transcoders, graph).summary()
        assert record["g"]["faithfulness"] == pytest.approx(scores["logit_agreement"], rel=1e-5)
        assert record["g"]["logit_share_measured"] == pytest.approx(scores["logit_share_measured"], rel=1e-5)
    run = toy_demo.execute_query("MATCH (r:AnalysisRun {id: 'faithfulness'}) RETURN r.status AS s").records
    assert [r["s"] for r in run] == ["finished"]


def test_only_unscored_graphs_are_checked_and_missing_files_are_counted(
    toy_demo: neo4j.Driver, tmp_path: Path
) -> None:
    before = {r["id"]: r["g"] for r in toy_demo.execute_query(_GRAPHS).records}
    kept, moved = sorted(before)[:2]
    clear = "UNWIND $ids AS id MATCH (g:Graph {id: id}) REMOVE " + ", ".join(f"g.{s}" for s in SCORES)
    toy_demo.execute_query(clear, ids=[kept, moved])
    toy_demo.execute_query(
        "MATCH (g:Graph {id: $id}) SET g.path = $path", id=moved, path=str(tmp_path / "gone.safetensors")
    )
    shelf = ModelShelf(sources=(), held=[shipped_toy()])
    try:
        result = check_faithfulness(toy_demo, models=shelf)
    finally:
        toy_demo.execute_query(
            "MATCH (g:Graph {id: $id}) SET g.path = $path", id=moved, path=before[moved]["path"]
        )
    assert (result["graphs"], result["graphs_checked"], result["graphs_without_file"]) == (2, 1, 1)
    after = {r["id"]: r["g"] for r in toy_demo.execute_query(_GRAPHS).records}
    for score in SCORES:
        assert after[kept].get(score) == pytest.approx(before[kept].get(score), rel=1e-9)
        assert after[moved].get(score) is None
    again = check_faithfulness(toy_demo, models=shelf)  # the moved graph's file is back: only it is left
    assert (again["graphs"], again["graphs_checked"]) == (1, 1)
    rechecked = check_faithfulness(toy_demo, models=shelf, config=FaithfulnessStepConfig(recheck=True))
    assert rechecked["graphs_checked"] == len(before)


def test_graphs_of_an_unknown_model_are_counted_not_checked(toy_demo: neo4j.Driver) -> None:
    some = sorted(r["id"] for r in toy_demo.execute_query(_GRAPHS).records)[0]
    toy_demo.execute_query("MATCH (g:Graph {id: $id}) REMOVE g.faithfulness", id=some)
    result = check_faithfulness(toy_demo, models=ModelShelf())
    assert (result["graphs"], result["graphs_without_model"], result["graphs_checked"]) == (1, 1, 0)
    check_faithfulness(toy_demo, models=ModelShelf(held=[shipped_toy()]))  # leave it scored for other tests


def test_config_checks_its_batch() -> None:
    with pytest.raises(AnalysisError, match="faithfulness batch must be >= 1, got 0"):
        FaithfulnessStepConfig(batch=0).check()
