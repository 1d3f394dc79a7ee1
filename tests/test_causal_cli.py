"""`circuitbase analyze`'s causal options: bad values are refused with one line before any database work;
the shelf of models by name (engine/shelf.py) loads a source only when a name is not held yet; the
GraphQL API reads a subcircuit's causal support (null when it was not measured)."""

from __future__ import annotations

import neo4j
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from circuitbase.analysis.causal import CausalConfig
from circuitbase.analysis.gds import AnalysisError
from circuitbase.api.app import ApiConfig, create_app
from circuitbase.cli import app
from circuitbase.engine.shelf import ModelShelf, ModelSource, with_shipped_toy
from circuitbase.engine.toy import shipped_paths


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--causal-threshold", "0"], "causal threshold must be in (0, 1], got 0.0"),
        (["--min-causal-support", "1.5"], "min causal support must be in [0, 1], got 1.5"),
        (["--step", "causal", "--no-causal"], "--step causal with --no-causal leaves nothing to run"),
        (
            ["--step", "faithfulness", "--no-faithfulness"],
            "--step faithfulness with --no-faithfulness leaves nothing to run",
        ),
        (["--model", "toy", "--transcoders", "a", "--transcoders", "b"], "give one --transcoders for each"),
    ],
)
def test_bad_causal_options_exit_with_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["analyze", *args, "--no-progress"])
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())


def test_config_checks_its_batch() -> None:
    with pytest.raises(AnalysisError, match="causal batch must be >= 1, got 0"):
        CausalConfig(batch=0).check()


def test_the_shelf_loads_sources_in_order_and_only_when_needed() -> None:
    model_dir, transcoder_dir = shipped_paths()
    shelf = ModelShelf(sources=with_shipped_toy(()), device="cpu")
    assert shelf.names == []
    assert shelf.find("other-model", "other-set") is None  # every source loaded, none matches
    assert shelf.names == [("toy", "toy-plt-topk")]
    loaded, transcoders = shelf.find("toy", "toy-plt-topk")
    assert (loaded.name, transcoders.name) == ("toy", "toy-plt-topk")
    held = ModelShelf(
        sources=[ModelSource(str(model_dir), str(transcoder_dir))], held=[(loaded, transcoders)]
    )
    assert held.find("toy", "toy-plt-topk")[0] is loaded and held.names == [("toy", "toy-plt-topk")]


@pytest.mark.neo4j
def test_the_api_reads_causal_support(clean_db: neo4j.Driver) -> None:
    clean_db.execute_query(
        "CREATE (:Subcircuit {key: 'a', rank: 1, support: 3, support_fraction: 0.5, sources: ['x'], "
        "targets: ['y'], causal_support: 0.75, causal_occurrences: 4}), "
        "(:Subcircuit {key: 'b', rank: 2, support: 2, support_fraction: 0.25, sources: ['x'], "
        "targets: ['z']})"
    )
    query = "{ subcircuits(first: 5) { edges { node { key causalSupport causalOccurrences } } } }"
    with TestClient(create_app(config=ApiConfig(), driver=clean_db)) as client:
        body = client.post("/graphql", json={"query": query}).json()
    assert "errors" not in body, body
    assert [e["node"] for e in body["data"]["subcircuits"]["edges"]] == [
        {"key": "a", "causalSupport": 0.75, "causalOccurrences": 4},
        {"key": "b", "causalSupport": None, "causalOccurrences": None},
    ]
