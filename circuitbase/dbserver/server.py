"""Start, stop and inspect one background Neo4j instance (its own conf/data/logs, sharing an install).

Start:
1. If the pid file names a live Neo4j of this instance, report it as already running.
2. Install (or verify) the jars, find Java, check both loopback ports are free.
3. Write conf/neo4j.conf and the log4j2 configs; on the very first start set the initial password
   (env CIRCUITBASE_NEO4J_PASSWORD, or generated) with neo4j-admin and keep it in a 0600 file.
4. Launch CommunityEntryPoint detached, record its pid, poll Bolt until it authenticates or time runs out.
"""

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import neo4j
from neo4j.exceptions import AuthError, Neo4jError, ServiceUnavailable

from circuitbase.dbserver.admin import run_admin
from circuitbase.dbserver.config import INSTANCE_FILE, PASSWORD_FILE, InstanceConfig, Layout
from circuitbase.dbserver.errors import DbServerError
from circuitbase.dbserver.install import Installation, install
from circuitbase.dbserver.java import find_java

PID_FILE = "neo4j.pid"
USER = "neo4j"
PASSWORD_ENV = "CIRCUITBASE_NEO4J_PASSWORD"
JVM_FLAGS = (
    "-XX:+UseG1GC",
    "-XX:-OmitStackTraceInFastThrow",
    "-XX:+ExitOnOutOfMemoryError",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--enable-native-access=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Djdk.nio.maxCachedBufferSize=1024",
    "-Dlog4j2.disable.jmx=true",
    "-Dfile.encoding=UTF-8",
    "-Djol.skipHotspotSAAttach=true",
)


@dataclass(frozen=True)
class ServerStatus:
    """The state of one instance; versions are filled only when the server answered."""

    config: InstanceConfig
    running: bool
    pid: int | None = None
    already_running: bool = False
    neo4j_version: str | None = None
    gds_version: str | None = None

    @property
    def bolt_uri(self) -> str:
        return f"bolt://127.0.0.1:{self.config.bolt_port}"

    @property
    def browser_url(self) -> str:
        return f"http://127.0.0.1:{self.config.http_port}/browser/"


def _pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaps it if it is our own exited child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    proc_file = Path(f"/proc/{pid}/cmdline")
    if proc_file.exists():
        return proc_file.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    result = subprocess.run(
        ["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return result.stdout


def running_pid(instance_dir: Path) -> int | None:
    """The pid of this instance's live server per its pid file (stale pid files are removed), else None."""
    pid_file = instance_dir / PID_FILE
    if not pid_file.is_file():
        return None
    try:
        pid = int(pid_file.read_text().strip())
    except ValueError:
        pid_file.unlink()
        return None
    if _pid_alive(pid) and f"--home-dir={instance_dir}" in _cmdline(pid):
        return pid
    pid_file.unlink()
    return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def neo4j_conf(config: InstanceConfig, *, instance_dir: Path, installation: Installation) -> str:
    """The neo4j.conf text for this instance (loopback only, auth on, GDS procedures unrestricted)."""
    settings = {
        "server.directories.data": instance_dir / "data",
        "server.directories.logs": instance_dir / "logs",
        "server.directories.run": instance_dir / "run",
        "server.directories.import": instance_dir / "import",
        "server.directories.lib": installation.lib_dir,
        "server.directories.plugins": installation.plugins_dir,
        "server.default_listen_address": "127.0.0.1",
        "server.default_advertised_address": "127.0.0.1",
        "server.bolt.listen_address": f"127.0.0.1:{config.bolt_port}",
        "server.bolt.advertised_address": f"127.0.0.1:{config.bolt_port}",
        "server.http.enabled": "true",
        "server.http.listen_address": f"127.0.0.1:{config.http_port}",
        "server.http.advertised_address": f"127.0.0.1:{config.http_port}",
        "server.https.enabled": "false",
        "server.memory.heap.initial_size": config.heap,
        "server.memory.heap.max_size": config.heap,
        "server.memory.pagecache.size": config.pagecache,
        "dbms.security.auth_enabled": "true",
        "dbms.security.procedures.unrestricted": "gds.*",
        "dbms.usage_report.enabled": "false",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _write_conf(config: InstanceConfig, *, instance_dir: Path, installation: Installation) -> None:
    conf_dir = instance_dir / "conf"
    for sub in ("conf", "data", "logs", "run", "import"):
        (instance_dir / sub).mkdir(parents=True, exist_ok=True)
    (conf_dir / "neo4j.conf").write_text(
        neo4j_conf(config, instance_dir=instance_dir, installation=installation)
    )
    package = resources.files("circuitbase.dbserver")
    for name in ("server-logs.xml", "user-logs.xml"):
        (conf_dir / name).write_text(package.joinpath(name).read_text())
    (instance_dir / INSTANCE_FILE).write_text(config.to_json())


def _classpath(installation: Installation, instance_dir: Path) -> str:
    return f"{installation.plugins_dir}/*:{instance_dir / 'conf'}/*:{installation.lib_dir}/*"


def _ensure_password(*, java: Path, installation: Installation, instance_dir: Path) -> str:
    """The instance password; on a never-started instance, set it as the initial password first."""
    password_file = instance_dir / PASSWORD_FILE
    if (instance_dir / "data" / "dbms" / "auth.ini").exists():
        if not password_file.is_file():
            raise DbServerError(
                f"{instance_dir} has users but no {PASSWORD_FILE} file; delete the instance dir"
            )
        return password_file.read_text().strip()
    stored = password_file.read_text().strip() if password_file.is_file() else None
    # hex: a generated password must never start with '-', which the admin tool reads as an option
    password = os.environ.get(PASSWORD_ENV) or stored or secrets.token_hex(16)
    if len(password) < 8 or password.startswith("-"):
        raise DbServerError(f"{PASSWORD_ENV} must have at least 8 characters and not start with '-'")
    run_admin(
        ["dbms", "set-initial-password", password],
        installation=installation,
        instance_dir=instance_dir,
        java=java,
        what="neo4j-admin set-initial-password",
    )
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


def _log_tail(instance_dir: Path, *, lines: int = 15) -> str:
    parts = []
    for name in ("console.log", "neo4j.log", "debug.log"):
        path = instance_dir / "logs" / name
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            if tail:
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
    return "\n".join(parts) or "(no log output)"


def _query_versions(config: InstanceConfig, password: str) -> tuple[str, str]:
    with neo4j.GraphDatabase.driver(f"bolt://127.0.0.1:{config.bolt_port}", auth=(USER, password)) as driver:
        components, _, _ = driver.execute_query("CALL dbms.components() YIELD name, versions RETURN *")
        kernel = next(r["versions"][0] for r in components if r["name"] == "Neo4j Kernel")
        gds, _, _ = driver.execute_query("RETURN gds.version() AS version")
        return kernel, gds[0]["version"]


def _wait_for_bolt(
    process: subprocess.Popen[bytes],
    *,
    config: InstanceConfig,
    password: str,
    instance_dir: Path,
    timeout_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    uri = f"bolt://127.0.0.1:{config.bolt_port}"
    while True:
        if process.poll() is not None:
            (instance_dir / PID_FILE).unlink(missing_ok=True)
            raise DbServerError(
                f"Neo4j exited with code {process.returncode} while starting; last log lines:\n"
                f"{_log_tail(instance_dir)}"
            )
        try:
            with neo4j.GraphDatabase.driver(uri, auth=(USER, password), connection_timeout=2.0) as driver:
                driver.verify_connectivity()
            return
        except AuthError as exc:
            raise DbServerError(f"Neo4j at {uri} rejected the stored password: {exc.message}") from exc
        except (ServiceUnavailable, OSError, Neo4jError):
            if time.monotonic() > deadline:
                raise DbServerError(
                    f"Neo4j did not answer on {uri} within {timeout_s:.0f}s (pid {process.pid} still runs); "
                    f"last log lines:\n{_log_tail(instance_dir)}"
                ) from None
            time.sleep(0.5)


def start(
    config: InstanceConfig,
    *,
    layout: Layout,
    timeout_s: float = 180.0,
    log: Callable[[str], None] = print,
) -> ServerStatus:
    """Start instance `config.name` in the background and wait for Bolt (no-op if it already runs)."""
    instance_dir = layout.instance_dir(config.name)
    pid = running_pid(instance_dir)
    if pid is not None:
        stored = layout.load_instance(config.name) or config
        return ServerStatus(config=stored, running=True, pid=pid, already_running=True)
    installation = install(layout=layout, versions=config.versions, log=log).installation
    java = find_java()
    for label, port in (("bolt", config.bolt_port), ("http", config.http_port)):
        if not _port_free(port):
            raise DbServerError(
                f"{label} port {port} on 127.0.0.1 is already in use; choose another with --{label}-port"
            )
    _write_conf(config, instance_dir=instance_dir, installation=installation)
    password = _ensure_password(java=java.executable, installation=installation, instance_dir=instance_dir)
    command = [
        str(java.executable),
        f"-Xms{config.heap}",
        f"-Xmx{config.heap}",
        *JVM_FLAGS,
        "-cp",
        _classpath(installation, instance_dir),
        "org.neo4j.server.CommunityEntryPoint",
        f"--home-dir={instance_dir}",
        f"--config-dir={instance_dir / 'conf'}",
    ]
    with (instance_dir / "logs" / "console.log").open("ab") as console:
        process = subprocess.Popen(
            command, cwd=instance_dir, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    (instance_dir / PID_FILE).write_text(f"{process.pid}\n")
    _wait_for_bolt(process, config=config, password=password, instance_dir=instance_dir, timeout_s=timeout_s)
    return ServerStatus(config=config, running=True, pid=process.pid)


def stop(name: str, *, layout: Layout, timeout_s: float = 60.0) -> int | None:
    """Stop instance `name` (SIGTERM, SIGKILL after `timeout_s`); returns the pid, or None if not running."""
    instance_dir = layout.instance_dir(name)
    pid = running_pid(instance_dir)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
        time.sleep(0.2)
    (instance_dir / PID_FILE).unlink(missing_ok=True)
    return pid


def status(name: str, *, layout: Layout) -> ServerStatus:
    """Whether instance `name` runs and, if it answers, its Neo4j and GDS versions."""
    config = layout.load_instance(name)
    if config is None:
        raise DbServerError(f"no Neo4j instance {name!r} under {layout.root}; run `circuitbase neo4j start`")
    pid = running_pid(layout.instance_dir(name))
    if pid is None:
        return ServerStatus(config=config, running=False)
    password = layout.read_password(name)
    if password is None:
        raise DbServerError(f"instance {name!r} has no password file")
    try:
        kernel, gds = _query_versions(config, password)
    except (ServiceUnavailable, AuthError, Neo4jError) as exc:
        raise DbServerError(f"Neo4j pid {pid} runs but does not answer queries: {exc}") from exc
    return ServerStatus(config=config, running=True, pid=pid, neo4j_version=kernel, gds_version=gds)
