"""Right-vs-wrong comparisons stratified by task on a real Neo4j server: a split confounded with tasks is
flagged, and task-only features do not lead the table (CLI and API too).

Synthetic planted-circuit graphs (analysis.synthetic) of three tasks, like the right-vs-wrong study of
real prompts: "io" prompts are all right, "capitals" all wrong, and "sums" right where the planted path
is whole and wrong where it breaks after its first feature (the "lost" features).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import neo4j
import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

from circuitbase.analysis.compare import Split, compare
from circuitbase.analysis.synthetic import PlantedCircuit, SyntheticConfig, synthetic_graph
from circuitbase.api.app import ApiConfig, create_app
from circuitbase.cli import app
from circuitbase.commands import analyze
from circuitbase.ingest.model import GraphRows, feature_key
from circuitbase.ingest.schema import apply_schema, wipe_database
from circuitbase.ingest.writer import write_graph
from circuitbase.settings import PASSWORD_ENV, URI_ENV, USER_ENV, Neo4jSettings

pytestmark = pytest.mark.neo4j

IO = PlantedCircuit("io", token=5, features=((0, 3), (1, 9)), answer=6)
CAPITALS = PlantedCircuit("capitals", token=1, features=((0, 7), (2, 11)), answer=2)
SUMS = PlantedCircuit("sums", token=3, features=((1, 5), (2, 19), (3, 23)), answer=4)
CONFIG = SyntheticConfig(n_graphs=72, circuits=(IO, CAPITALS, SUMS), broken_fraction=0.5, seed=7)
FORCED = {"io": True, "capitals": False}  # the tasks whose correctness is their own, whatever the path
LOST = {feature_key("synthetic-set", layer, index) for layer, index in SUMS.features[1:]}
TASK_ONLY = {
    feature_key("synthetic-set", layer, index) for c in (IO, CAPITALS) for layer, index in c.features
}
LABELS = {key: f"label of {key}" for key in LOST | TASK_ONLY}


def graphs(*, tasks: tuple[str, ...]) -> list[GraphRows]:
    out = []
    for i in range(CONFIG.n_graphs):
        g = synthetic_graph(i, config=CONFIG)
        tag = g.prompt["tags"][0]
        if tag in tasks:
            correct = FORCED.get(tag, g.graph["correct"])
            out.append(dataclasses.replace(g, graph={**g.graph, "correct": correct}))
    return out


def load(driver: neo4j.Driver, rows: list[GraphRows]) -> None:
    wipe_database(driver)
    apply_schema(driver)
    for g in rows:
        write_graph(driver, g)
    driver.execute_query(
        "UNWIND $rows AS r MATCH (f:Feature {key: r.key}) SET f.label = r.label",
        rows=[{"key": k, "label": v} for k, v in LABELS.items()],
    )


@pytest.fixture(scope="module")
def study(neo4j_driver: neo4j.Driver) -> list[GraphRows]:
    rows = graphs(tasks=("io", "capitals", "sums"))
    load(neo4j_driver, rows)
    return rows


def test_task_confounded_split_is_flagged_and_task_features_do_not_lead(
    neo4j_driver: neo4j.Driver, study: list[GraphRows]
) -> None:
    sums = [g for g in study if g.prompt["tags"] == ["sums"]]
    right_sums = sum(bool(g.graph["correct"]) for g in sums)
    assert 3 <= right_sums <= len(sums) - 3  # both sides inside the sums task
    result = compare(neo4j_driver, Split(split="correct"), limit=50)
    assert result.within == "tags"
    strata = {s.name: (s.n_a, s.n_b, s.one_sided) for s in result.strata}
    assert strata == {
        "capitals": (0, 24, True),
        "io": (24, 0, True),
        "sums": (right_sums, len(sums) - right_sums, False),
    }
    assert {(t.name, t.n_a, t.n_b) for t in result.confounded_tags} == {("io", 24, 0), ("capitals", 0, 24)}
    assert not result.fully_confounded
    # shown: only rows with q < 0.05, led by the features a broken sums path loses (lost in every wrong
    # sums graph: a risk difference of 1 within the task); the task-only features are never tested
    assert result.features_passing == len(result.features) >= len(LOST)
    assert {r["feature"] for r in result.features[: len(LOST)]} == LOST
    for row in result.features[: len(LOST)]:
        assert row["mh_diff"] == pytest.approx(1.0) and row["q_value"] < 0.05
        assert row["label"] == LABELS[row["feature"]]
    assert all(r["q_value"] < 0.05 for r in result.features)
    assert not TASK_ONLY & {r["feature"] for r in result.features}
    # the crude table over all graphs puts task-only features first: what stratifying avoids
    crude = compare(neo4j_driver, Split(split="correct"), within="none", all_rows=True, limit=50)
    assert crude.confounded_tags == result.confounded_tags
    assert {r["feature"] for r in crude.features[: len(TASK_ONLY)]} <= TASK_ONLY | LOST
    assert crude.features[0]["feature"] in TASK_ONLY and abs(crude.features[0]["diff"]) > 0.6
    # every row, untested ones last (no estimate: they occur in one-sided strata only)
    everything = compare(neo4j_driver, Split(split="correct"), all_rows=True, limit=10_000)
    assert len(everything.features) > len(result.features)
    untested = [r for r in everything.features if r["feature"] in TASK_ONLY]
    assert len(untested) == len(TASK_ONLY)
    assert all(r["q_value"] is None and r["test_z"] is None for r in untested)
    assert all(r["q_value"] is None for r in everything.features[everything.features.index(untested[0]) :])


def test_a_split_that_is_only_task_is_fully_confounded(neo4j_driver: neo4j.Driver) -> None:
    load(neo4j_driver, graphs(tasks=("io", "capitals")))  # every right prompt is io, every wrong capitals
    result = compare(neo4j_driver, Split(split="correct"))
    assert result.fully_confounded and all(s.one_sided for s in result.strata)
    assert (result.features_tested, result.features, result.subcircuits) == (0, [], [])
    assert {t.name for t in result.confounded_tags} == {"io", "capitals"}


@pytest.fixture
def cli_env(neo4j_settings: Neo4jSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test server's settings, and a 120-column terminal (CliRunner's own is 80)."""
    for name, value in ((URI_ENV, neo4j_settings.uri), (USER_ENV, neo4j_settings.user)):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(PASSWORD_ENV, neo4j_settings.password)
    monkeypatch.setattr(analyze, "console", Console(stderr=True, width=120))


def test_cli_reports_strata_confounding_q_values_and_labels(
    neo4j_driver: neo4j.Driver, cli_env: None
) -> None:
    rows = graphs(tasks=("io", "capitals", "sums"))
    load(neo4j_driver, rows)
    result = CliRunner().invoke(app, ["compare", "--split", "correct", "--limit", "5"])
    assert result.exit_code == 0, result.output
    print(result.output)
    lines = result.output.splitlines()
    text = " ".join(result.output.split())
    assert "one side only: left out" in text and "split confounded with tags" in text
    expected = compare(neo4j_driver, Split(split="correct"))
    assert f"{expected.features_tested} tested, {expected.features_passing} with q < 0.05" in text
    for key in LOST:  # each id whole on one line, its label beside it
        [line] = [line for line in lines if key in line]
        assert "label of" in line
    assert not any(key in result.output for key in TASK_ONLY)
    bad = CliRunner().invoke(app, ["compare", "--split", "correct", "--fdr", "0"])
    assert bad.exit_code == 1 and "fdr must lie in (0, 1]" in " ".join(bad.output.split())


@pytest.fixture
def client(neo4j_driver: neo4j.Driver) -> Iterator[TestClient]:
    with TestClient(create_app(config=ApiConfig(), driver=neo4j_driver)) as client:
        yield client


COMPARE = """query($within: String, $fdr: Float!, $all: Boolean!) {
  compareSets(sides: {split: "correct"}, limit: 50, within: $within, fdr: $fdr, allRows: $all) {
    nA nB within fdr test fullyConfounded featuresTested featuresPassing subcircuitsTested
    strata { name nA nB oneSided } confoundedTags { name nA nB }
    features { key label kA kB diff mhDiff testZ pValue qValue feature { key label } } } }"""


def test_api_exposes_q_values_strata_and_the_fdr(neo4j_driver: neo4j.Driver, client: TestClient) -> None:
    load(neo4j_driver, graphs(tasks=("io", "capitals", "sums")))

    def ask(**variables: object) -> dict:
        body = client.post("/graphql", json={"query": COMPARE, "variables": variables}).json()
        assert "errors" not in body, body
        return body["data"]["compareSets"]

    out = ask(within=None, fdr=0.05, all=False)
    expected = compare(neo4j_driver, Split(split="correct"), limit=50)
    assert (out["within"], out["fdr"], out["fullyConfounded"]) == ("tags", 0.05, False)
    assert "Mantel-Haenszel" in out["test"] and "Benjamini-Hochberg" in out["test"]
    assert (out["featuresTested"], out["featuresPassing"]) == (
        expected.features_tested,
        expected.features_passing,
    )
    assert [f["key"] for f in out["features"]] == [r["feature"] for r in expected.features]
    assert {f["key"] for f in out["features"][: len(LOST)]} == LOST
    for f in out["features"]:
        assert f["qValue"] < 0.05 and f["pValue"] <= f["qValue"] and f["label"] == f["feature"]["label"]
    assert {s["name"]: s["oneSided"] for s in out["strata"]} == {"io": True, "capitals": True, "sums": False}
    assert {t["name"] for t in out["confoundedTags"]} == {"io", "capitals"}
    strict = ask(within=None, fdr=1e-6, all=False)
    assert (
        strict["featuresPassing"] < out["featuresPassing"]
        and len(strict["features"]) == strict["featuresPassing"]
    )
    crude = ask(within="none", fdr=0.05, all=True)
    assert crude["within"] == "none" and [s["name"] for s in crude["strata"]] == ["all"]
    assert crude["features"][0]["key"] in TASK_ONLY
    for bad in ({"within": None, "fdr": 0.0, "all": False}, {"within": "", "fdr": 0.05, "all": False}):
        body = client.post("/graphql", json={"query": COMPARE, "variables": bad}).json()
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
