"""Run `neo4j-admin` (class `org.neo4j.cli.AdminTool`) against one local instance's home and config.

The command runs with the install's jars on the classpath and NEO4J_HOME / NEO4J_CONF pointing at the
instance directory, so it acts on that instance's data (`dbms set-initial-password` before the first
start, `database import full` while the instance is stopped). A non-zero exit raises DbServerError with
the tail of the tool's output.
"""

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from circuitbase.dbserver.config import Layout
from circuitbase.dbserver.errors import DbServerError
from circuitbase.dbserver.install import Installation, install
from circuitbase.dbserver.java import find_java

ADMIN_CLASS = "org.neo4j.cli.AdminTool"


@dataclass(frozen=True)
class AdminResult:
    """The admin tool's exit code and combined output."""

    returncode: int
    output: str


def run_admin(
    args: Sequence[str],
    *,
    installation: Installation,
    instance_dir: Path,
    java: Path | None = None,
    heap: str | None = None,
    what: str = "neo4j-admin",
) -> AdminResult:
    """Run `neo4j-admin ARGS` for the instance at `instance_dir`; DbServerError if it fails.

    java: the java executable (default: `find_java()`); heap: the tool's `-Xmx` (default: the JVM's);
    what: how the command is named in the error message (default "neo4j-admin").
    """
    executable = java or find_java().executable
    env = {**os.environ, "NEO4J_HOME": str(instance_dir), "NEO4J_CONF": str(instance_dir / "conf")}
    command = [str(executable), *([f"-Xmx{heap}"] if heap else []), "-cp", f"{installation.lib_dir}/*"]
    proc = subprocess.run(
        [*command, ADMIN_CLASS, *args], env=env, capture_output=True, text=True, check=False
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise DbServerError(f"{what} failed (exit {proc.returncode}): {output.strip()[-1500:]}")
    return AdminResult(proc.returncode, output)


def run_admin_stopped(
    name: str,
    args: Sequence[str],
    *,
    layout: Layout,
    heap: str | None = None,
    what: str = "neo4j-admin",
) -> AdminResult:
    """Run `neo4j-admin ARGS` against local instance `name`, which must exist and be stopped.

    heap / what: as for `run_admin` (defaults: the JVM's heap, "neo4j-admin").
    """
    from circuitbase.dbserver.server import running_pid  # server runs the admin tool itself: no cycle

    config = layout.load_instance(name)
    if config is None:
        raise DbServerError(f"no local Neo4j instance {name!r} under {layout.root}")
    instance_dir = layout.instance_dir(name)
    pid = running_pid(instance_dir)
    if pid is not None:
        raise DbServerError(f"instance {name!r} runs (pid {pid}); stop it before running {what}")
    installation = install(layout=layout, versions=config.versions, log=lambda _line: None).installation
    return run_admin(args, installation=installation, instance_dir=instance_dir, heap=heap, what=what)
