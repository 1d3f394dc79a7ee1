"""The project-provisioned Neo4j + GDS server: versions, Browser, idempotent start, port clash, installs."""

import os
import shutil
import socket
import urllib.request
from pathlib import Path

import neo4j
import pytest
from conftest import Neo4jTestServer
from typer.testing import CliRunner

from circuitbase.cli import app
from circuitbase.commands.neo4j import app as neo4j_cli
from circuitbase.dbserver.config import InstanceConfig, Layout
from circuitbase.dbserver.errors import DbServerError
from circuitbase.dbserver.install import MARKER_FILE, install, verify_installation
from circuitbase.dbserver.java import find_java, parse_java_major
from circuitbase.dbserver.server import start
from circuitbase.ingest.schema import SchemaError, apply_schema, schema_statements
from circuitbase.settings import PASSWORD_ENV, URI_ENV, USER_ENV

pytestmark = pytest.mark.neo4j


def _local(server: Neo4jTestServer) -> tuple[Layout, InstanceConfig]:
    if server.source != "local" or server.layout is None or server.config is None:
        pytest.skip(f"needs the project-provisioned server (this session uses {server.source})")
    return server.layout, server.config


def test_versions_match_the_install(neo4j_server: Neo4jTestServer, neo4j_driver: neo4j.Driver) -> None:
    records, _, _ = neo4j_driver.execute_query(
        "CALL dbms.components() YIELD name, versions, edition RETURN *"
    )
    kernel = next(r for r in records if r["name"] == "Neo4j Kernel")
    gds_version = neo4j_driver.execute_query("RETURN gds.version() AS v").records[0]["v"]
    assert kernel["edition"] == "community"
    if neo4j_server.config is not None:
        assert kernel["versions"] == [neo4j_server.config.versions.neo4j]
        assert gds_version == neo4j_server.config.versions.gds
    else:
        assert kernel["versions"][0].startswith("5.26.")
        assert gds_version.startswith("2.13.")


def test_browser_answers_on_the_http_port(neo4j_server: Neo4jTestServer) -> None:
    _, config = _local(neo4j_server)
    with urllib.request.urlopen(f"http://127.0.0.1:{config.http_port}/browser/", timeout=10) as response:
        assert response.status == 200
        assert "Neo4j Browser" in response.read().decode()


def test_start_is_idempotent(neo4j_server: Neo4jTestServer, neo4j_driver: neo4j.Driver) -> None:
    layout, config = _local(neo4j_server)
    first_pid = (layout.instance_dir(config.name) / "neo4j.pid").read_text().strip()
    again = start(config, layout=layout)
    assert again.already_running
    assert str(again.pid) == first_pid
    assert neo4j_driver.execute_query("RETURN 1 AS one").records[0]["one"] == 1


def test_status_reports_running_versions(neo4j_server: Neo4jTestServer) -> None:
    layout, config = _local(neo4j_server)
    result = CliRunner().invoke(
        neo4j_cli, ["status", "--cache-dir", str(layout.root), "--instance", config.name]
    )
    pid = (layout.instance_dir(config.name) / "neo4j.pid").read_text().strip()
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        f"Neo4j instance {config.name!r} running (pid {pid}): "
        f"Neo4j {config.versions.neo4j} Community, GDS {config.versions.gds}"
    )


def test_taken_port_is_a_one_line_error(neo4j_server: Neo4jTestServer) -> None:
    layout, _ = _local(neo4j_server)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        args = [
            "start",
            "--cache-dir",
            str(layout.root),
            "--instance",
            "port-clash",
            "--bolt-port",
            str(port),
        ]
        result = CliRunner().invoke(
            neo4j_cli, [*args, "--http-port", str(port + 1 if port < 65535 else port - 1)]
        )
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: bolt port {port} on 127.0.0.1 is already in use; choose another with --bolt-port"
    )
    assert not layout.instance_dir("port-clash").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({URI_ENV: "bolt://127.0.0.1:1"}, f"error: {URI_ENV} is set but {PASSWORD_ENV} is not"),
        (
            {URI_ENV: "bolt://127.0.0.1:1", PASSWORD_ENV: "x"},
            "error: cannot connect to Neo4j at bolt://127.0.0.1:1 as neo4j: ",
        ),
    ],
)
def test_a_job_without_a_reachable_database_is_a_one_line_error(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (URI_ENV, USER_ENV, PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["analyze"], env={**env, "COLUMNS": "300"})
    assert result.exit_code == 1
    assert result.output.startswith(message), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.slow
def test_broken_install_is_detected_and_redone(neo4j_server: Neo4jTestServer, tmp_path: Path) -> None:
    layout, config = _local(neo4j_server)
    versions = config.versions
    scratch = Layout(tmp_path / "root")
    broken = scratch.install_dir(versions)
    shutil.copytree(layout.install_dir(versions), broken, copy_function=os.link)  # hard links: cheap, and
    scratch.maven_repo.symlink_to(layout.maven_repo)  # unlinking a file below never touches the original
    jar = sorted((broken / "plugins").glob("proc-2*.jar"))[0]

    jar.unlink()
    with pytest.raises(DbServerError, match=r"does not match its marker: missing \['plugins/proc-2"):
        verify_installation(broken, versions=versions)
    jar.write_bytes(b"not a jar")
    with pytest.raises(DbServerError, match="fails its sha256 check"):
        verify_installation(broken, versions=versions)
    (broken / MARKER_FILE).unlink()
    with pytest.raises(DbServerError, match=f"{MARKER_FILE} is missing"):
        verify_installation(broken, versions=versions)

    messages: list[str] = []
    result = install(layout=scratch, versions=versions, log=messages.append)
    assert result.assembled
    assert messages == [
        f"install at {broken} is incomplete: {MARKER_FILE} is missing; reinstalling",
        f"resolving {versions} through Maven into {broken} ...",
    ]
    redone = verify_installation(broken, versions=versions)
    original = verify_installation(layout.install_dir(versions), versions=versions)
    assert (redone.jar_count, redone.size_bytes) == (original.jar_count, original.size_bytes)
    assert sorted(p.name for p in broken.parent.iterdir()) == [f".{versions.key}.lock", versions.key]


def test_schema_is_applied_idempotently(clean_db: neo4j.Driver) -> None:
    first = apply_schema(clean_db)
    assert apply_schema(clean_db) == first
    names = {r["name"] for r in clean_db.execute_query("SHOW CONSTRAINTS YIELD name").records}
    assert {"model_name", "ingest_job_id"} <= names
    clean_db.execute_query("CREATE (:Model {name: 'gemma'})")
    with pytest.raises(neo4j.exceptions.ConstraintError):
        clean_db.execute_query("CREATE (:Model {name: 'gemma'})")


def test_schema_rejects_a_statement_that_is_not_idempotent() -> None:
    assert schema_statements("// c\nCREATE INDEX a IF NOT EXISTS FOR (n:A) ON (n.x);") == [
        "CREATE INDEX a IF NOT EXISTS FOR (n:A) ON (n.x)"
    ]
    with pytest.raises(SchemaError, match=r"not `CREATE \.\.\. IF NOT EXISTS`"):
        schema_statements("CREATE INDEX a FOR (n:A) ON (n.x);")


def test_java_version_is_parsed_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_java_major('openjdk version "17.0.15" 2025-04-15') == 17
    assert parse_java_major('java version "1.8.0_392"') == 8
    assert parse_java_major('openjdk version "21" 2023-09-19') == 21
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(DbServerError, match="has no bin/java"):
        find_java()
