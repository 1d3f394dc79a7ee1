"""Loading real attribution graphs (tiny model + fixture transcoders) into the real Neo4j server."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import neo4j
import pytest
import torch

from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.models import LoadedModel, load_model
from circuitbase.engine.prompts import Prompt
from circuitbase.engine.runner import GraphFiles, iter_attribute
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.ingest.jobs import JobRecord
from circuitbase.ingest.loader import IngestConfig, graph_files, ingest_files
from circuitbase.ingest.model import IngestError, feature_key, graph_id
from circuitbase.ingest.pipeline import ingest_prompts
from circuitbase.ingest.schema import apply_schema
from circuitbase.ingest.verify import content_checksum

pytestmark = pytest.mark.neo4j

FIXTURES = Path(__file__).parent / "fixtures" / "circuit-tracer-format"
TEXTS = ("the cat sat on the mat", "hello world", "a b c d", "the world")
CONFIG = AttributionConfig(max_feature_nodes=64)


@pytest.fixture(scope="session")
def tiny() -> tuple[LoadedModel, TranscoderSet]:
    return load_model(str(FIXTURES / "tiny-llama")), TranscoderSet.load(FIXTURES / "plt-relu")


@pytest.fixture(scope="session")
def graph_dir(tmp_path_factory: pytest.TempPathFactory, tiny: tuple[LoadedModel, TranscoderSet]) -> Path:
    """Four real graph files (+ their Neuronpedia JSON twins) of the tiny model."""
    out = tmp_path_factory.mktemp("graphs")
    prompts = [
        Prompt(text=t, answer=" the", tags=("t",), dataset="d", id=f"p{i}") for i, t in enumerate(TEXTS)
    ]
    for _ in iter_attribute(
        *tiny, prompts, out, config=CONFIG, files=GraphFiles(neuronpedia=True), show_progress=False
    ):
        pass
    return out


@pytest.fixture
def db(clean_db: neo4j.Driver) -> neo4j.Driver:
    apply_schema(clean_db)
    return clean_db


def query(driver: neo4j.Driver, cypher: str, **params: object) -> list[dict]:
    records, _, _ = driver.execute_query(cypher, **params)
    return [r.data() for r in records]


def binaries(graph_dir: Path) -> list[Path]:
    return sorted(graph_dir.glob("*.safetensors"))


def test_counts_match_the_pruned_graph_files(db: neo4j.Driver, graph_dir: Path) -> None:
    files = graph_files(graph_dir)
    assert files == binaries(graph_dir)  # the JSON twins are the same graphs
    summary = ingest_files(db, files)
    assert (summary.loaded, summary.skipped, summary.bad) == (4, 0, [])
    for path in files:
        graph = AttributionGraph.load(path)
        gid = graph_id(graph.transcoder_name, graph.prompt_meta["id"])
        [row] = query(
            db,
            "MATCH (g:Graph {id: $id})-[:OF_PROMPT]->(p:Prompt) "
            "OPTIONAL MATCH (n:GraphNode)-[:IN_GRAPH]->(g) WITH g, p, count(n) AS nodes "
            "OPTIONAL MATCH (a:GraphNode {graph: $id})-[e:EDGE]->(:GraphNode) "
            "RETURN g.complete AS complete, g.n_nodes AS n_nodes, g.n_edges AS n_edges, nodes, "
            "count(e) AS edges, sum(e.weight) AS total, p.text AS text, p.tags AS tags",
            id=gid,
        )
        kept = int(graph.node_mask.sum())
        _, weights = graph.edges(pruned=True)
        assert row["complete"] is True
        assert row["nodes"] == row["n_nodes"] == kept
        assert row["edges"] == row["n_edges"] == int(graph.edge_mask.sum())
        assert row["total"] == pytest.approx(float(weights.double().sum()), rel=1e-6, abs=1e-9)
        assert (row["text"], row["tags"]) == (graph.prompt, ["t"])
        kinds = query(db, "MATCH (n:ErrorNode {graph: $id}) RETURN count(n) AS errors", id=gid)[0]["errors"]
        errors = graph.node_mask[graph.error_offset : graph.token_offset]
        assert kinds == int(errors.sum())


def test_features_are_shared_by_exactly_the_graphs_that_use_them(db: neo4j.Driver, graph_dir: Path) -> None:
    ingest_files(db, binaries(graph_dir))
    expected: dict[str, set[str]] = defaultdict(set)
    for path in binaries(graph_dir):
        graph = AttributionGraph.load(path)
        kept = graph.node_mask[: graph.n_features]
        for layer, _pos, feat in graph.active_features[graph.selected_features][kept].tolist():
            expected[feature_key(graph.transcoder_name, layer, feat)].add(graph.prompt_meta["id"])
    rows = query(
        db,
        "MATCH (f:Feature)<-[:INSTANCE_OF]-(n:FeatureNode)-[:IN_GRAPH]->(:Graph)-[:OF_PROMPT]->(p:Prompt) "
        "RETURN f.key AS key, collect(DISTINCT p.id) AS prompts",
    )
    found = {r["key"]: set(r["prompts"]) for r in rows}
    assert found == expected
    assert any(len(prompts) > 1 for prompts in expected.values())  # the fixture does share features


def test_aggregated_edges_count_graphs_and_sum_weights(db: neo4j.Driver, graph_dir: Path) -> None:
    ingest_files(db, binaries(graph_dir))
    graphs: dict[tuple[str, str], int] = defaultdict(int)
    sums: dict[tuple[str, str], float] = defaultdict(float)
    for path in binaries(graph_dir):
        graph = AttributionGraph.load(path)
        feats = graph.active_features[graph.selected_features].tolist()
        key = {i: feature_key(graph.transcoder_name, f[0], f[2]) for i, f in enumerate(feats)}
        (targets, sources), weights = graph.edges(pruned=True)
        seen: set[tuple[str, str]] = set()
        for t, s, w in zip(targets.tolist(), sources.tolist(), weights.tolist(), strict=True):
            if s in key and t in key:
                pair = (key[s], key[t])
                sums[pair] += w
                seen.add(pair)
        for pair in seen:
            graphs[pair] += 1
    rows = query(
        db,
        "MATCH (a:Feature)-[e:ATTRIBUTES]->(b:Feature) RETURN a.key AS a, b.key AS b, e.graphs AS graphs, "
        "e.sum AS sum, e.sum_abs AS sum_abs, e.max_abs AS max_abs",
    )
    assert {(r["a"], r["b"]): r["graphs"] for r in rows} == dict(graphs)
    for r in rows:
        assert r["sum"] == pytest.approx(sums[(r["a"], r["b"])], rel=1e-6, abs=1e-9)
        assert r["sum_abs"] >= abs(r["sum"]) - 1e-9 and r["max_abs"] <= r["sum_abs"] + 1e-9
    assert max(graphs.values()) > 1
    token_edges = query(
        db, "MATCH (:Token)-[e:ATTRIBUTES]->(:Feature) RETURN count(e) AS n, min(e.graphs) AS lo"
    )[0]
    assert token_edges["n"] > 0 and token_edges["lo"] >= 1


def test_loading_twice_changes_nothing(db: neo4j.Driver, graph_dir: Path) -> None:
    first = ingest_files(db, binaries(graph_dir))
    checksum = content_checksum(db)
    second = ingest_files(db, binaries(graph_dir))
    assert (second.loaded, second.skipped, second.relationships) == (0, 4, 0)
    assert content_checksum(db) == checksum
    job = JobRecord(db, job_id=second.job_id).read()
    assert (job["status"], job["graphs_loaded"], job["graphs_skipped"]) == ("finished", 0, 4)
    assert first.relationships > 0


def test_neuronpedia_json_loads_the_same_graph(db: neo4j.Driver, graph_dir: Path) -> None:
    documents = sorted(graph_dir.glob("*.json"))
    summary = ingest_files(db, documents)
    assert summary.loaded == 4
    for doc in documents:
        data = json.loads(doc.read_text())
        gid = graph_id(data["metadata"]["transcoder_list"][0], data["metadata"]["slug"])
        [row] = query(
            db,
            "MATCH (n:GraphNode {graph: $id}) OPTIONAL MATCH (n)-[e:EDGE]->() "
            "RETURN count(DISTINCT n) AS nodes, count(e) AS edges",
            id=gid,
        )
        assert (row["nodes"], row["edges"]) == (len(data["nodes"]), len(data["links"]))
    # the binary twins are the same graphs: all skipped
    assert ingest_files(db, binaries(graph_dir)).skipped == 4


def _corrupt(graph_dir: Path, out: Path) -> Path:
    graph = AttributionGraph.load(binaries(graph_dir)[0])
    adj = graph.adjacency.coalesce()
    values = adj.values().clone()
    values[graph.edge_mask.nonzero()[0]] = float("nan")
    graph.adjacency = torch.sparse_coo_tensor(
        adj.indices(), values, adj.shape, check_invariants=True
    ).coalesce()
    graph.prompt_meta = {**graph.prompt_meta, "id": "bad"}
    return graph.save(out / "bad.safetensors")


def test_bad_graphs_fail_cleanly_or_are_skipped(db: neo4j.Driver, graph_dir: Path, tmp_path: Path) -> None:
    bad = _corrupt(graph_dir, tmp_path)
    with pytest.raises(IngestError, match=r"bad\.safetensors: \d+ non-finite edge weights"):
        ingest_files(db, [bad])
    assert query(db, "MATCH (n) WHERE NOT n:IngestJob RETURN count(n) AS n")[0]["n"] == 0
    assert query(db, "MATCH (j:IngestJob) RETURN j.status AS s")[0]["s"] == "failed"

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    files = [bad, broken, *binaries(graph_dir)[:2]]
    summary = ingest_files(db, files, config=IngestConfig(skip_bad=True))
    assert summary.loaded == 2 and summary.status == "finished_with_errors"
    assert [line.split(":")[0] for line in summary.bad] == [str(bad), str(broken)]
    assert len(JobRecord(db, job_id=summary.job_id).read()["errors"]) == 2

    with pytest.raises(IngestError, match="uses transcoder set 'fixtures/plt-relu', the job loads 'other'"):
        ingest_files(db, binaries(graph_dir)[2:], config=IngestConfig(transcoder_set="other"))
    assert query(db, "MATCH (g:Graph) RETURN count(g) AS n")[0]["n"] == 2


@pytest.mark.parametrize(("writers", "keep_full"), [(1, False), (2, True)])
def test_pipeline_attributes_and_loads(
    db: neo4j.Driver, tiny: tuple[LoadedModel, TranscoderSet], tmp_path: Path, writers: int, keep_full: bool
) -> None:
    prompts = [Prompt(text=t, id=f"q{i}") for i, t in enumerate(TEXTS[:3])]
    config = IngestConfig(writers=writers)
    summary = ingest_prompts(
        db, *tiny, prompts, tmp_path, attribution=CONFIG, config=config,
        files=GraphFiles(keep_full=keep_full), queue_size=1, show_progress=False,
    )  # fmt: skip
    assert (summary.loaded, summary.skipped, summary.status) == (3, 0, "finished")
    remainders = [AttributionGraph.load(f).remainder for f in tmp_path.glob("*.safetensors")]
    assert remainders == ["float16" if keep_full else "dropped"] * 3
    ids = {r["id"] for r in query(db, "MATCH (g:Graph {complete: true}) RETURN g.id AS id")}
    assert ids == {graph_id("fixtures/plt-relu", p.id) for p in prompts}
    again = ingest_prompts(db, *tiny, prompts, tmp_path, attribution=CONFIG, show_progress=False)
    assert (again.loaded, again.skipped) == (0, 3)
