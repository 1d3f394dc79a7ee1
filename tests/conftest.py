"""Shared pytest fixtures. Each section belongs to one area; append new sections below the last one."""

# ======================================================================================================
# Neo4j: one real server per test session (never a mock).
#   1. env CIRCUITBASE_NEO4J_URI (+ CIRCUITBASE_NEO4J_USER, CIRCUITBASE_NEO4J_PASSWORD): an existing server;
#   2. else testcontainers, when a Docker engine answers: neo4j:5.26-community with the GDS plugin;
#   3. else the project-provisioned local server as the separate instance "test" (bolt 7698, http 7485),
#      installed on demand and stopped at session end; concurrent test sessions on one machine take turns
#      (an exclusive file lock held for the whole session), so clean_db never wipes another session's data.
# A server that cannot be reached or started is a test ERROR, never a skip: CI must prove GDS ran.
# ======================================================================================================

import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import neo4j
import pytest
import torch

from circuitbase.dbserver.config import InstanceConfig, Layout
from circuitbase.dbserver.errors import DbServerError
from circuitbase.dbserver.server import start as start_local_server
from circuitbase.dbserver.server import stop as stop_local_server
from circuitbase.ingest.schema import wipe_database
from circuitbase.settings import URI_ENV, Neo4jSettings, load_neo4j_settings, local_instance_settings
from tests.numerics import DEVICES

NEO4J_TEST_INSTANCE = InstanceConfig(name="test", bolt_port=7698, http_port=7485, heap="1g", pagecache="256m")
NEO4J_TEST_IMAGE = "neo4j:5.26-community"
NEO4J_TEST_LOCK_WAIT_S = 900.0


@dataclass(frozen=True)
class Neo4jTestServer:
    """The session's server: how to reach it, where it came from, and (local only) its layout and config."""

    settings: Neo4jSettings
    source: str  # "env", "testcontainers" or "local"
    layout: Layout | None = None
    config: InstanceConfig | None = None


def _docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:  # any failure (no client lib, no socket, no engine) means "no Docker"
        return False
    return True


def _testcontainers_server() -> Iterator[Neo4jTestServer]:
    try:
        from testcontainers.community.neo4j import Neo4jContainer
    except ImportError:  # testcontainers < 4.14 keeps it here
        from testcontainers.neo4j import Neo4jContainer

    container = (
        Neo4jContainer(NEO4J_TEST_IMAGE, password="circuitbase-test")
        .with_env("NEO4J_PLUGINS", '["graph-data-science"]')
        .with_env("NEO4J_dbms_security_procedures_unrestricted", "gds.*")
    )
    with container:
        settings = Neo4jSettings(uri=container.get_connection_url(), password=container.password)
        yield Neo4jTestServer(settings=settings, source="testcontainers")


def _take_turn(lock_file: IO[str]) -> None:
    """Block until this session holds the test instance's lock (released when the process exits)."""
    deadline = time.monotonic() + NEO4J_TEST_LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"another test session held {lock_file.name} for {NEO4J_TEST_LOCK_WAIT_S:.0f}s",
                    pytrace=False,
                )
            time.sleep(1.0)


def _local_server() -> Iterator[Neo4jTestServer]:
    layout = Layout.resolve()
    lock_path = layout.instance_dir(NEO4J_TEST_INSTANCE.name).with_suffix(".session.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock_file:
        _take_turn(lock_file)
        try:
            started = start_local_server(NEO4J_TEST_INSTANCE, layout=layout, log=lambda _line: None)
        except DbServerError as exc:
            message = f"the local Neo4j test instance could not be started: {exc}"
            raise pytest.fail.Exception(message, pytrace=False) from None
        settings = local_instance_settings(name=NEO4J_TEST_INSTANCE.name, cache_dir=layout.root)
        try:
            yield Neo4jTestServer(settings=settings, source="local", layout=layout, config=started.config)
        finally:  # holding the lock, this session owns the instance, even one a crashed session left running
            stop_local_server(NEO4J_TEST_INSTANCE.name, layout=layout)


@pytest.fixture(scope="session")
def neo4j_server() -> Iterator[Neo4jTestServer]:
    """The session's real Neo4j + GDS server (see the order at the top of this section)."""
    if os.environ.get(URI_ENV):
        yield Neo4jTestServer(settings=load_neo4j_settings(), source="env")
    elif _docker_engine_answers():
        yield from _testcontainers_server()
    else:
        yield from _local_server()


@pytest.fixture(scope="session")
def neo4j_settings(neo4j_server: Neo4jTestServer) -> Neo4jSettings:
    """Connection settings of the session's server."""
    return neo4j_server.settings


@pytest.fixture(scope="session")
def neo4j_driver(neo4j_settings: Neo4jSettings) -> Iterator[neo4j.Driver]:
    """A driver connected to the session's server; fails the tests loudly if it does not answer."""
    driver = neo4j.GraphDatabase.driver(
        neo4j_settings.uri, auth=(neo4j_settings.user, neo4j_settings.password)
    )
    try:
        driver.verify_connectivity()
    except (neo4j.exceptions.ServiceUnavailable, neo4j.exceptions.AuthError) as exc:
        driver.close()
        pytest.fail(f"Neo4j at {neo4j_settings.uri} does not answer: {exc}", pytrace=False)
    yield driver
    driver.close()


@pytest.fixture
def clean_db(neo4j_driver: neo4j.Driver, neo4j_settings: Neo4jSettings) -> neo4j.Driver:
    """The session driver, after dropping every GDS graph and deleting every node (in batches)."""
    with neo4j_driver.session(database=neo4j_settings.database) as session:
        session.run(
            "CALL gds.graph.list() YIELD graphName "
            "CALL gds.graph.drop(graphName, false) YIELD graphName AS dropped RETURN count(dropped)"
        ).consume()
    wipe_database(neo4j_driver, database=neo4j_settings.database)
    return neo4j_driver


# ============================================ end of Neo4j ============================================


# ======================================================================================================
# Devices: engine tests take `device`, parametrised over every device present (tests/numerics.py).
# ======================================================================================================


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each device present: the CPU always, CUDA when there is one."""
    return torch.device(request.param)


# ============================================ end of Devices ==========================================
