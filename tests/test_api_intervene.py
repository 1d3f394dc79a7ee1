"""The `intervene` query against the real Neo4j server: its answer is the Python function's
(`run_with_interventions`) for a graph of the shipped toy model and one of the tiny fixture model, and it
refuses what is past its limits with a clear GraphQL error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import neo4j
import pytest
import torch
from fastapi.testclient import TestClient

from circuitbase.api.app import ApiConfig, create_app
from circuitbase.api.errors import ApiError
from circuitbase.api.interventions import ModelSource
from circuitbase.api.limits import Limits, RateLimiter
from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.interventions import FeatureIntervention
from circuitbase.engine.prompts import Prompt
from circuitbase.engine.runner import iter_attribute
from circuitbase.engine.toy import fixed_examples, shipped_paths
from circuitbase.ingest.loader import ingest_files
from circuitbase.ingest.model import graph_id
from tests.api_data import FIXTURES
from tests.intervention_reference import reference
from tests.numerics import assert_close
from tests.toy_demo_data import shipped_toy

pytest_plugins = ["tests.api_data"]  # the graph_files and store fixtures

TINY = ModelSource(str(FIXTURES / "tiny-llama"), str(FIXTURES / "plt-relu"))
TOY_PROMPT = fixed_examples()[0]  # a two-hop lookup: "capital of city_0 is" -> its state's capital
TOY_GRAPH = graph_id("toy-plt-topk", "toy-0")
TINY_GRAPH = graph_id("fixtures/plt-relu", "p0")
LIMITS = Limits(max_intervention_features=4, max_intervention_tokens=12)
QUERY = """query($g: ID!, $f: [FeatureChangeInput!]!, $p: String, $free: Boolean! = false, $top: Int! = 5) {
  intervene(graphId: $g, features: $f, prompt: $p, freeAttention: $free, top: $top) {
    graphId model transcoderSet prompt tokens freeAttention
    changes { layer position feature activationBefore activationAfter }
    before { tokenId text probability logit } after { tokenId text probability logit }
    logitChanges { tokenId text before after change } } }"""
VIEW = """query($g: ID!) { graph(id: $g) { promptText view(minInfluence: 0, topK: 1) {
  nodes { kind layer position featureIndex influence activation } } } }"""


@pytest.fixture(scope="module")
def toy_store(store: neo4j.Driver, tmp_path_factory: pytest.TempPathFactory) -> neo4j.Driver:
    """The API test data plus one graph of the shipped toy model (its first two-hop prompt)."""
    toy = shipped_toy()
    prompt = Prompt(text=TOY_PROMPT["prompt"], answer=TOY_PROMPT["answer"], tags=("two_hop",), id="toy-0")
    out = tmp_path_factory.mktemp("toy-graph")
    config = AttributionConfig(max_feature_nodes=64)
    files = [path for _, path in iter_attribute(*toy, [prompt], out, config=config, show_progress=False)]
    ingest_files(store, files)
    return store


@pytest.fixture(scope="module")
def client(toy_store: neo4j.Driver) -> Iterator[TestClient]:
    """The API running the tiny fixture model (given) and the toy model (always), on the CPU."""
    config = ApiConfig(limits=LIMITS, intervention_models=(TINY,), intervention_device="cpu")
    with TestClient(create_app(config=config, driver=toy_store)) as client:
        yield client


def gql(client: TestClient, query: str, **variables: Any) -> dict:
    response = client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code < 500, response.text
    return response.json()


def intervene(client: TestClient, graph: str, features: list[dict], **variables: Any) -> dict:
    body = gql(client, QUERY, g=graph, f=features, **variables)
    assert "errors" not in body, body
    return body["data"]["intervene"]


def refused(client: TestClient, graph: str, features: list[dict], **variables: Any) -> tuple[str, str]:
    """(code, message) of the one error an intervention is refused with."""
    body = gql(client, QUERY, g=graph, f=features, **variables)
    assert body["data"] is None and len(body["errors"]) == 1, body
    return body["errors"][0]["extensions"]["code"], body["errors"][0]["message"]


def strongest_features(client: TestClient, graph: str, n: int) -> list[dict]:
    """The graph's `n` most influential feature nodes (layer, position, featureIndex, activation)."""
    body = gql(client, VIEW, g=graph)
    nodes = [x for x in body["data"]["graph"]["view"]["nodes"] if x["kind"] == "FEATURE"]
    return sorted(nodes, key=lambda x: -x["influence"])[:n]


@pytest.mark.neo4j
@pytest.mark.parametrize(
    ("graph", "source", "free"),
    [
        (TOY_GRAPH, tuple(map(str, shipped_paths())), False),
        (TOY_GRAPH, tuple(map(str, shipped_paths())), True),
        (TINY_GRAPH, (TINY.model, TINY.transcoders), False),
    ],
)
def test_answer_equals_the_python_function(
    client: TestClient, graph: str, source: tuple[str, str], free: bool
) -> None:
    strongest = strongest_features(client, graph, 3)
    assert len(strongest) == 3
    third = strongest[2]
    text = gql(client, VIEW, g=graph)["data"]["graph"]["promptText"]
    # zero the two strongest, double the third
    expected = reference(
        Path(source[0]),
        Path(source[1]),
        text,
        [
            *(
                FeatureIntervention(n["layer"], n["position"], n["featureIndex"], value=0.0)
                for n in strongest[:2]
            ),
            FeatureIntervention(third["layer"], third["position"], third["featureIndex"], scale=2.0),
        ],
        freeze_attention=not free,
        top=5,
    )
    changes = [
        *(
            {"layer": n["layer"], "position": n["position"], "feature": n["featureIndex"]}
            for n in strongest[:2]
        ),
        {  # its position counted from the end
            "layer": third["layer"],
            "position": third["position"] - expected.n_tokens,
            "feature": third["featureIndex"],
            "scale": 2.0,
        },
    ]
    out = intervene(client, graph, changes, free=free, top=5)
    assert len(out["tokens"]) == expected.n_tokens
    assert out["prompt"] == text and out["freeAttention"] == free
    assert [c["position"] for c in out["changes"]] == [n["position"] for n in strongest]
    # positions line up with the graph's: the activations before are the graph nodes' activations
    assert_close(
        torch.tensor([c["activationBefore"] for c in out["changes"]]),
        torch.tensor([n["activation"] for n in strongest]),
        rel=1e-5,
    )
    assert_close(
        torch.tensor([c["activationAfter"] for c in out["changes"]]),
        torch.tensor(expected.activation_after),
        rel=1e-6,
    )
    assert [c["activationAfter"] for c in out["changes"][:2]] == [0.0, 0.0]
    for key, (ids, probs) in (("before", expected.top_before), ("after", expected.top_after)):
        assert [t["tokenId"] for t in out[key]] == ids
        assert_close(torch.tensor([t["probability"] for t in out[key]]), torch.tensor(probs), rel=1e-5)
    ids = [row["tokenId"] for row in out["logitChanges"]]
    assert set(ids) == {t["tokenId"] for t in out["before"] + out["after"]}
    assert_close(torch.tensor([row["before"] for row in out["logitChanges"]]), expected.before[ids], rel=1e-5)
    assert_close(torch.tensor([row["after"] for row in out["logitChanges"]]), expected.after[ids], rel=1e-5)
    assert not torch.allclose(expected.before, expected.after)  # the features matter


@pytest.mark.neo4j
def test_toy_ablation_of_the_strongest_features_changes_the_answer(client: TestClient) -> None:
    strongest = strongest_features(client, TOY_GRAPH, LIMITS.max_intervention_features)
    changes = [
        {"layer": n["layer"], "position": n["position"], "feature": n["featureIndex"]} for n in strongest
    ]
    out = intervene(client, TOY_GRAPH, changes, top=3)
    assert out["model"] == "toy" and out["transcoderSet"] == "toy-plt-topk"
    assert out["before"][0]["text"].strip() == TOY_PROMPT["answer"]  # the toy model knows the answer
    answer = next(r for r in out["logitChanges"] if r["tokenId"] == out["before"][0]["tokenId"])
    assert answer["change"] < 0  # and ablating its circuit's strongest features lowers it
    assert answer["change"] == pytest.approx(answer["after"] - answer["before"])


@pytest.mark.neo4j
@pytest.mark.parametrize(
    ("features", "variables", "code", "message"),
    [
        (
            [{"layer": 0, "position": 0, "feature": 1}] * 5,
            {},
            "BAD_USER_INPUT",
            "change 1 to 4 features at once, got 5",
        ),
        ([], {}, "BAD_USER_INPUT", "change 1 to 4 features at once, got 0"),
        (
            [{"layer": 0, "position": 0, "feature": 1}],
            {"p": " ".join(["city_1"] * 20)},
            "BAD_USER_INPUT",
            "the prompt has 21 tokens; interventions take 1 to 12",
        ),
        ([{"layer": 0, "position": 0, "feature": 1}], {"p": "  "}, "BAD_USER_INPUT", "the prompt is empty"),
        (
            [{"layer": 2, "position": 0, "feature": 1}],
            {},
            "BAD_USER_INPUT",
            "features[0]: layer 2 is not one of 0..1",
        ),
        (
            [{"layer": 0, "position": 1, "feature": 1}, {"layer": 1, "position": 9, "feature": 1}],
            {},
            "BAD_USER_INPUT",
            "features[1]: position 9 is past the prompt's 5 tokens (0..4, or -5..-1 from the end)",
        ),
        (
            [{"layer": 0, "position": -6, "feature": 1}],
            {},
            "BAD_USER_INPUT",
            "features[0]: position -6 is past the prompt's 5 tokens",
        ),
        (
            [{"layer": 1, "position": 2, "feature": 256}],
            {},
            "BAD_USER_INPUT",
            "features[0]: feature 256 is not one of 0..255",
        ),
        (
            [{"layer": 1, "position": 2, "feature": 3, "value": 1.0, "scale": 2.0}],
            {},
            "BAD_USER_INPUT",
            "features[0]: give value or scale, not both",
        ),
        (
            [{"layer": 1, "position": 2, "feature": 3}],
            {"top": 0},
            "BAD_USER_INPUT",
            "top must be between 1 and 100",
        ),
    ],
)
def test_limits_and_bad_features_are_clear_errors(
    client: TestClient, features: list[dict], variables: dict, code: str, message: str
) -> None:
    found = refused(client, TOY_GRAPH, features, **variables)
    assert found[0] == code and found[1].startswith(message), found


@pytest.mark.neo4j
def test_unknown_graph_and_unknown_model(client: TestClient) -> None:
    change = [{"layer": 0, "position": 0, "feature": 0}]
    assert refused(client, "no/such-graph", change) == ("NOT_FOUND", "no complete graph 'no/such-graph'")
    code, message = refused(client, graph_id("synthetic-set", "synthetic-0-0"), change)
    assert code == "NOT_FOUND"
    assert message.startswith("this server cannot run model 'synthetic' with transcoder set 'synthetic-set'")
    assert "tiny-llama with fixtures/plt-relu" in message and "toy with toy-plt-topk" in message


@pytest.mark.neo4j
def test_answers_are_cached_and_model_runs_rate_limited(toy_store: neo4j.Driver) -> None:
    config = ApiConfig(limits=Limits(interventions_per_minute=2), intervention_device="cpu")
    with TestClient(create_app(config=config, driver=toy_store)) as client:
        first = intervene(client, TOY_GRAPH, [{"layer": 0, "position": -1, "feature": 1}])
        intervene(client, TOY_GRAPH, [{"layer": 0, "position": -1, "feature": 2}])
        code, message = refused(client, TOY_GRAPH, [{"layer": 0, "position": -1, "feature": 3}])
        assert code == "RATE_LIMITED"
        assert message.startswith("interventions: this server runs at most 2 a minute; try again in ")
        # a cached answer runs nothing, so it is not limited (and is the same answer)
        assert intervene(client, TOY_GRAPH, [{"layer": 0, "position": -1, "feature": 1}]) == first
        # a bad request is refused before it counts
        assert refused(client, TOY_GRAPH, [{"layer": 5, "position": 0, "feature": 1}])[0] == "BAD_USER_INPUT"


def test_rate_limiter_window_and_concurrency() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=2, max_waiting=1, clock=lambda: now[0])
    busy = r"^runs: 1 already running or waiting on this server"
    with limiter.take("runs"), pytest.raises(ApiError, match=busy), limiter.take("runs"):
        pass
    now[0] = 10.0
    with limiter.take("runs"):
        pass
    now[0] = 30.0
    full = r"^runs: this server runs at most 2 a minute; try again in 30 s$"
    with pytest.raises(ApiError, match=full), limiter.take("runs"):
        pass
    now[0] = 60.0  # the first start has left the window
    with limiter.take("runs"):
        pass
