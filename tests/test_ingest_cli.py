"""`circuitbase ingest` as a subprocess: SIGKILL mid-job, re-run, and get exactly a clean run's database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import neo4j
import pytest
import torch

from circuitbase.engine.graph import AttributionGraph
from circuitbase.ingest.loader import ingest_files
from circuitbase.ingest.schema import apply_schema
from circuitbase.ingest.verify import content_checksum
from circuitbase.settings import PASSWORD_ENV, URI_ENV, USER_ENV, Neo4jSettings
from tests.numerics import assert_close
from tests.test_ingest import graph_dir, tiny  # noqa: F401  (session fixtures)

pytestmark = pytest.mark.neo4j
N_GRAPHS = 80


@pytest.fixture(scope="module")
def many_graphs(tmp_path_factory: pytest.TempPathFactory, graph_dir: Path) -> Path:  # noqa: F811
    """N_GRAPHS graph files: the four real graphs under new prompt ids (only the ids differ)."""
    out = tmp_path_factory.mktemp("many")
    sources = [AttributionGraph.load(p) for p in sorted(graph_dir.glob("*.safetensors"))]
    for i in range(N_GRAPHS):
        graph = sources[i % len(sources)]
        graph.prompt_meta = {**graph.prompt_meta, "id": f"m{i:03d}"}
        graph.save(out / f"m{i:03d}.safetensors")
    return out


def cli(settings: Neo4jSettings, *args: str) -> subprocess.Popen:
    env = {**os.environ, URI_ENV: settings.uri, USER_ENV: settings.user, PASSWORD_ENV: settings.password}
    env["COLUMNS"] = "500"  # one error message per line
    code = "from circuitbase.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "ingest", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def complete_graphs(driver: neo4j.Driver) -> int:
    records, _, _ = driver.execute_query("MATCH (g:Graph {complete: true}) RETURN count(g) AS n")
    return records[0]["n"]


def test_kill_and_resume_equals_a_clean_run(
    clean_db: neo4j.Driver, neo4j_settings: Neo4jSettings, many_graphs: Path
) -> None:
    apply_schema(clean_db)
    ingest_files(clean_db, sorted(many_graphs.glob("*.safetensors")))
    clean = content_checksum(clean_db)
    clean_db.execute_query("MATCH (n) DETACH DELETE n")

    job = cli(neo4j_settings, "--graphs", str(many_graphs), "--no-progress")
    deadline = time.monotonic() + 120
    while complete_graphs(clean_db) < 3 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    killed_at = complete_graphs(clean_db)
    assert 3 <= killed_at < N_GRAPHS, "the job should have been killed mid-way"
    records, _, _ = clean_db.execute_query("MATCH (j:IngestJob) RETURN j.status AS s, j.graphs_loaded AS n")
    assert [(r["s"], r["n"]) for r in records] == [("running", killed_at)]

    rerun = cli(neo4j_settings, "--graphs", str(many_graphs), "--no-progress")
    output = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, output
    assert complete_graphs(clean_db) == N_GRAPHS
    assert content_checksum(clean_db) == clean
    records, _, _ = clean_db.execute_query(
        "MATCH (j:IngestJob {status: 'finished'}) "
        "RETURN j.graphs_loaded AS loaded, j.graphs_skipped AS skipped"
    )
    assert [(r["loaded"], r["skipped"]) for r in records] == [(N_GRAPHS - killed_at, killed_at)]


def test_cli_reports_bad_input_with_file_and_line(
    clean_db: neo4j.Driver,
    neo4j_settings: Neo4jSettings,
    tmp_path: Path,
    graph_dir: Path,  # noqa: F811
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "the cat"}\n{"prompt": 3}\n')
    fixtures = Path(__file__).parent / "fixtures" / "circuit-tracer-format"
    job = cli(
        neo4j_settings, str(prompts), "--model", str(fixtures / "tiny-llama"), "--transcoders", "nowhere"
    )
    output = job.communicate(timeout=120)[0].decode()
    assert job.returncode == 1 and f"{prompts}:2: needs a non-empty string field 'prompt'" in output

    job = cli(
        neo4j_settings, str(prompts), "--model", "no-such-model", "--transcoders", "nowhere", "--skip-bad"
    )
    output = job.communicate(timeout=120)[0].decode()
    assert job.returncode == 1 and "model 'no-such-model' does not exist" in output

    job = cli(neo4j_settings, "--graphs", str(graph_dir), "--transcoders", "other-set", "--no-progress")
    output = job.communicate(timeout=120)[0].decode()
    assert (
        job.returncode == 1 and "uses transcoder set 'fixtures/plt-relu', the job loads 'other-set'" in output
    )
    assert complete_graphs(clean_db) == 0


def aggregate_snapshot(driver: neo4j.Driver) -> tuple[dict[str, int], dict[tuple[str, str], list[float]]]:
    """Counts per node label and relationship type, and every ATTRIBUTES edge's numbers by endpoint keys."""
    records, _, _ = driver.execute_query(
        "MATCH (n) WHERE NOT n:IngestJob UNWIND labels(n) AS label RETURN label, count(*) AS n "
        "UNION ALL MATCH ()-[r]->() RETURN type(r) AS label, count(*) AS n"
    )
    counts = {r["label"]: r["n"] for r in records}
    records, _, _ = driver.execute_query(
        "MATCH (a)-[e:ATTRIBUTES]->(b) "
        "RETURN a.key AS a, b.key AS b, [e.graphs, e.edges, e.sum, e.sum_abs, e.max_abs] AS numbers"
    )
    return counts, {(r["a"], r["b"]): r["numbers"] for r in records}


def test_concurrent_writers_load_what_one_writer_loads(
    clean_db: neo4j.Driver, neo4j_settings: Neo4jSettings, many_graphs: Path
) -> None:
    """Three writers on graphs that share every feature pair: same content, sums up to summation order."""
    apply_schema(clean_db)
    ingest_files(clean_db, sorted(many_graphs.glob("*.safetensors")))
    counts, edges = aggregate_snapshot(clean_db)
    clean_db.execute_query("MATCH (n) DETACH DELETE n")

    job = cli(neo4j_settings, "--graphs", str(many_graphs), "--no-progress", "--writers", "3")
    output = job.communicate(timeout=300)[0].decode()
    assert job.returncode == 0, output
    counts_3, edges_3 = aggregate_snapshot(clean_db)
    assert counts_3 == counts and counts["Graph"] == N_GRAPHS
    assert edges_3.keys() == edges.keys()
    assert max(numbers[0] for numbers in edges.values()) >= N_GRAPHS // 4  # writers share pairs
    keys = sorted(edges)
    assert [edges_3[k][:2] for k in keys] == [edges[k][:2] for k in keys]  # graphs and edges: integers
    floats = torch.tensor([edges[k][2:] for k in keys], dtype=torch.float64)
    assert_close(torch.tensor([edges_3[k][2:] for k in keys], dtype=torch.float64), floats, rel=1e-9)
    records, _, _ = clean_db.execute_query("MATCH (j:IngestJob) RETURN j.graphs_loaded AS n, j.status AS s")
    assert [(r["n"], r["s"]) for r in records] == [(N_GRAPHS, "finished")]
