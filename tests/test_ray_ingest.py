"""Ingest on a Ray cluster: a local Ray with two CPU actors runs the toy study into the test Neo4j.

The database must equal a single-process run's (same content checksum), also when an actor is killed
mid-job; a second run loads nothing; a bad address, a cluster without the GPUs asked for and a model the
workers cannot load each end the CLI with one error line and nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import neo4j
import pytest

from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.graph import AttributionGraph
from circuitbase.engine.loading import load_model_and_transcoders
from circuitbase.engine.prompts import Prompt, read_prompts
from circuitbase.engine.ray_pool import ClusterError, ClusterSpec, WorkerPool
from circuitbase.engine.runner import GRAPH_FILE_ONLY, GraphFiles
from circuitbase.engine.toy import shipped_paths, toy_prompts
from circuitbase.ingest.loader import IngestConfig, IngestSummary
from circuitbase.ingest.pipeline import ingest_prompts
from circuitbase.ingest.ray_ingest import ingest_prompts_on_cluster
from circuitbase.ingest.schema import apply_schema, wipe_database
from circuitbase.ingest.verify import content_checksum
from circuitbase.settings import PASSWORD_ENV, URI_ENV, USER_ENV, Neo4jSettings

ray = pytest.importorskip("ray")

# Two targets per backward pass: each toy prompt takes many passes, so an actor is busy long enough
# for the kill test to catch it mid-prompt.
ATTRIBUTION = AttributionConfig(batch_size=2, max_feature_nodes=None)
MODEL_DIR, TRANSCODER_DIR = shipped_paths()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """A local Ray with 2 CPUs (no dashboard) for this module; yields its address, shut down at the end."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ray-prompts") / "toy.jsonl"
    unique = list({p["prompt"]: p for p in toy_prompts(24, seed=3)}.values())[:16]  # no repeated text
    path.write_text("".join(json.dumps(p) + "\n" for p in unique), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prompts(prompts_file: Path) -> list[Prompt]:
    found = read_prompts(prompts_file).prompts
    assert len({p.id for p in found}) == len(found) == 16
    return found


@pytest.fixture(scope="module")
def graphs_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where every run writes its graph files (each :Graph records its file's path, part of the checksum)."""
    return tmp_path_factory.mktemp("graphs")


def emptied(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    return directory


@pytest.fixture(scope="module")
def single_process_checksum(neo4j_driver: neo4j.Driver, prompts: list[Prompt], graphs_out: Path) -> str:
    """The content checksum after the single-process pipeline loads the toy prompts into an empty database
    (its graph files are removed afterwards, so the cluster runs compute every graph again)."""
    wipe_database(neo4j_driver)
    apply_schema(neo4j_driver)
    loaded, transcoders, folder = load_model_and_transcoders(str(MODEL_DIR), TRANSCODER_DIR, device="cpu")
    summary = ingest_prompts(
        neo4j_driver,
        loaded,
        transcoders,
        prompts,
        emptied(graphs_out),
        attribution=ATTRIBUTION,
        config=IngestConfig(labels=folder),
        show_progress=False,
    )
    assert summary.loaded == len(prompts)
    checksum = content_checksum(neo4j_driver)
    emptied(graphs_out)
    return checksum


def start_pool() -> WorkerPool:
    return WorkerPool.start(
        ClusterSpec(cpu_actors=2), model=str(MODEL_DIR), transcoders=str(TRANSCODER_DIR), device="cpu"
    )


def on_cluster(
    driver: neo4j.Driver,
    pool: WorkerPool,
    prompts: list[Prompt],
    out: Path,
    files: GraphFiles = GRAPH_FILE_ONLY,
) -> IngestSummary:
    return ingest_prompts_on_cluster(
        driver, pool, prompts, out, attribution=ATTRIBUTION, files=files, show_progress=False
    )


def graph_counts(driver: neo4j.Driver) -> tuple[int, int, int]:
    """(complete graphs, graphs, distinct graph ids)."""
    records, _, _ = driver.execute_query(
        "MATCH (g:Graph) RETURN count(CASE WHEN g.complete THEN 1 END) AS complete, count(g) AS n, "
        "count(DISTINCT g.id) AS ids"
    )
    return records[0]["complete"], records[0]["n"], records[0]["ids"]


@pytest.mark.neo4j
def test_two_cpu_actors_load_what_one_process_loads(
    clean_db: neo4j.Driver,
    local_ray: str,
    prompts: list[Prompt],
    single_process_checksum: str,
    graphs_out: Path,
) -> None:
    apply_schema(clean_db)
    with start_pool() as pool:
        assert (pool.size, pool.info.model, pool.info.device) == (2, "toy", "cpu")
        first = on_cluster(clean_db, pool, prompts, emptied(graphs_out), GraphFiles(keep_full=True))
        assert (first.loaded, first.skipped, first.bad, first.status) == (16, 0, [], "finished")
        remainders = {AttributionGraph.load(f).remainder for f in graphs_out.glob("*.safetensors")}
        assert remainders == {"float16"}  # --keep-full reached the files the actors' graphs went to
        assert min(pool.stats.graphs) > 0 and sum(pool.stats.graphs) == 16
        assert first.features_labelled > 0  # the workers' labels reached the database
        assert content_checksum(clean_db) == single_process_checksum
        assert graph_counts(clean_db) == (16, 16, 16)

        again = on_cluster(clean_db, pool, prompts, emptied(graphs_out))
        assert (again.loaded, again.skipped) == (0, 16)
        assert sum(pool.stats.graphs) == 16 and not any(graphs_out.iterdir())  # nothing was scheduled
    assert content_checksum(clean_db) == single_process_checksum


@pytest.mark.neo4j
def test_an_actor_killed_mid_job_changes_nothing(
    clean_db: neo4j.Driver,
    local_ray: str,
    prompts: list[Prompt],
    single_process_checksum: str,
    graphs_out: Path,
) -> None:
    apply_schema(clean_db)
    emptied(graphs_out)
    with start_pool() as pool:
        result: list[IngestSummary] = []
        job = threading.Thread(target=lambda: result.append(on_cluster(clean_db, pool, prompts, graphs_out)))
        job.start()
        deadline = time.monotonic() + 120
        while pool.stats.graphs[0] < 2 and job.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        ray.kill(pool.actors[0])  # it has just been handed its next prompt
        job.join(timeout=300)
        assert result, "the job did not finish"
        summary = result[0]
        assert (summary.loaded, summary.bad, summary.status) == (16, [], "finished")
        assert pool.stats.alive == [False, True] and pool.stats.retried >= 1
        assert pool.stats.graphs[0] < 16 and sum(pool.stats.graphs) == 16
    assert graph_counts(clean_db) == (16, 16, 16)
    assert content_checksum(clean_db) == single_process_checksum


def cli(settings: Neo4jSettings, *args: str, without_ray: bool = False) -> tuple[int, str]:
    env = {**os.environ, URI_ENV: settings.uri, USER_ENV: settings.user, PASSWORD_ENV: settings.password}
    env["COLUMNS"] = "500"  # one error message per line
    hide = "import sys; sys.modules['ray'] = None; " if without_ray else ""
    code = f"{hide}from circuitbase.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, "ingest", *args], env=env, capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stdout + done.stderr


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.mark.neo4j
def test_cluster_failures_are_one_line_before_any_write(
    clean_db: neo4j.Driver, neo4j_settings: Neo4jSettings, local_ray: str, prompts_file: Path
) -> None:
    toy = [
        str(prompts_file),
        "--model",
        str(MODEL_DIR),
        "--transcoders",
        str(TRANSCODER_DIR),
        "--no-progress",
    ]
    port = closed_port()
    code, output = cli(neo4j_settings, *toy, "--ray", f"127.0.0.1:{port}")
    assert code == 1 and error_lines(output) == [
        f"error: no Ray cluster answers at 127.0.0.1:{port} (Connection refused); start one with "
        "`ray start --head` or check the address"
    ], output

    code, output = cli(neo4j_settings, *toy, "--ray", local_ray)
    assert code == 1 and error_lines(output) == [
        "error: the Ray cluster has 0 GPUs; 1 actors x 1 GPU need 1 (add GPU nodes, or attribute on CPU "
        "actors: --ray-cpu-actors N)"
    ], output

    code, output = cli(
        neo4j_settings,
        str(prompts_file),
        "--model",
        "no-such-model",
        "--ray",
        local_ray,
        "--ray-cpu-actors",
        "1",
    )
    [line] = error_lines(output)
    assert code == 1 and line.startswith(
        "error: the Ray workers could not load the model: model 'no-such-model' does not exist; accepted:"
    ), output
    records, _, _ = clean_db.execute_query("MATCH (n) RETURN count(n) AS n")
    assert records[0]["n"] == 0


def test_ray_missing_says_how_to_install(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("capital of city_1 is\n")
    settings = Neo4jSettings(uri="bolt://127.0.0.1:1")  # never reached: the check comes first
    code, output = cli(settings, str(prompts), "--model", "toy", "--ray", "auto", without_ray=True)
    assert code == 1 and error_lines(output) == [
        "error: Ray is not installed; install it with: pip install 'circuitbase[ray]'"
    ], output


@pytest.mark.parametrize(
    ("spec", "resources", "expected"),
    [
        (ClusterSpec(), {"CPU": 16, "GPU": 4}, (4, {"num_gpus": 1.0})),
        (ClusterSpec(gpus_per_actor=0.5), {"GPU": 2}, (4, {"num_gpus": 0.5})),
        (ClusterSpec(gpu_actors=3), {"GPU": 4}, (3, {"num_gpus": 1.0})),
        (ClusterSpec(cpu_actors=2, cpus_per_actor=4), {"CPU": 8}, (2, {"num_cpus": 4, "num_gpus": 0})),
    ],
)
def test_actor_counts_follow_the_cluster(
    spec: ClusterSpec, resources: dict[str, float], expected: tuple[int, dict[str, float]]
) -> None:
    assert spec.actor_options(resources) == expected


@pytest.mark.parametrize(
    ("spec", "resources", "message"),
    [
        (ClusterSpec(gpu_actors=3), {"GPU": 2}, "the Ray cluster has 2 GPUs; 3 actors x 1 GPU need 3"),
        (ClusterSpec(gpus_per_actor=1.5), {"GPU": 2}, "GPUs per actor must be in (0, 1], got 1.5"),
        (ClusterSpec(cpu_actors=3, cpus_per_actor=2), {"CPU": 4}, "the Ray cluster has 4 CPUs; 3 actors x 2"),
        (ClusterSpec(cpu_actors=1, in_flight=0), {"CPU": 4}, "in_flight and max_attempts >= 1"),
    ],
)
def test_a_cluster_too_small_is_one_clear_error(
    spec: ClusterSpec, resources: dict[str, float], message: str
) -> None:
    with pytest.raises(ClusterError) as error:
        spec.actor_options(resources)
    assert message in str(error.value)
