"""`circuitbase neo4j install|start|stop|status`: the project-provisioned local Neo4j + GDS server."""

from pathlib import Path
from typing import Annotated

import typer

from circuitbase.dbserver.config import InstanceConfig, Layout, Neo4jVersions
from circuitbase.dbserver.errors import DbServerError
from circuitbase.dbserver.install import install as install_jars
from circuitbase.dbserver.server import start as start_server
from circuitbase.dbserver.server import status as server_status
from circuitbase.dbserver.server import stop as stop_server

app = typer.Typer(
    help="Install and run a local Neo4j 5.26 Community + Open GDS 2.13 server.", no_args_is_help=True
)

CacheDir = Annotated[
    Path | None,
    typer.Option(
        help="Root of installs and instances [default: $CIRCUITBASE_HOME/neo4j or ~/.cache/circuitbase/neo4j]"
    ),
]
Instance = Annotated[
    str, typer.Option(help="Instance name: each has its own conf, data, logs, ports and password.")
]
_DEFAULTS = InstanceConfig()
_VERSIONS = Neo4jVersions()


def _fail(exc: DbServerError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=1)


@app.command()
def install(
    cache_dir: CacheDir = None,
    neo4j_version: Annotated[str, typer.Option(help="org.neo4j:neo4j version.")] = _VERSIONS.neo4j,
    gds_version: Annotated[
        str, typer.Option(help="org.neo4j.gds version (must match Neo4j).")
    ] = _VERSIONS.gds,
    browser_version: Annotated[
        str, typer.Option(help="org.neo4j.client:neo4j-browser version.")
    ] = _VERSIONS.browser,
    force: Annotated[bool, typer.Option(help="Rebuild even if a verified install exists.")] = False,
) -> None:
    """Resolve Neo4j, Open GDS and the Browser from Maven Central into a versioned install directory."""
    versions = Neo4jVersions(neo4j=neo4j_version, gds=gds_version, browser=browser_version)
    try:
        result = install_jars(
            layout=Layout.resolve(cache_dir), versions=versions, force=force, log=typer.echo
        )
    except DbServerError as exc:
        raise _fail(exc) from None
    done = result.installation
    verb = "installed" if result.assembled else "already installed:"
    typer.echo(
        f"{verb} Neo4j {versions.neo4j} + GDS {versions.gds} at {done.path} "
        f"({done.jar_count} jars, {done.size_bytes / 1e6:.0f} MB, {result.seconds:.1f}s)"
    )


@app.command()
def start(
    cache_dir: CacheDir = None,
    instance: Instance = _DEFAULTS.name,
    bolt_port: Annotated[
        int | None, typer.Option(help=f"Bolt port [default: stored or {_DEFAULTS.bolt_port}]")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help=f"HTTP port [default: stored or {_DEFAULTS.http_port}]")
    ] = None,
    heap: Annotated[str | None, typer.Option(help=f"JVM heap [default: stored or {_DEFAULTS.heap}]")] = None,
    pagecache: Annotated[
        str | None, typer.Option(help=f"Page cache [default: stored or {_DEFAULTS.pagecache}]")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for Bolt to answer.")] = 180.0,
) -> None:
    """Start the instance in the background (installing on demand) and wait until Bolt answers."""
    try:
        layout = Layout.resolve(cache_dir)
        stored = layout.load_instance(instance) or InstanceConfig(name=instance)
        config = InstanceConfig(
            name=instance,
            bolt_port=bolt_port or stored.bolt_port,
            http_port=http_port or stored.http_port,
            heap=heap or stored.heap,
            pagecache=pagecache or stored.pagecache,
            versions=stored.versions,
        )
        result = start_server(config, layout=layout, timeout_s=timeout, log=typer.echo)
    except DbServerError as exc:
        raise _fail(exc) from None
    state = "already running" if result.already_running else "started"
    typer.echo(f"Neo4j instance {instance!r} {state} (pid {result.pid})")
    typer.echo(f"Bolt:    {result.bolt_uri}")
    typer.echo(f"Browser: {result.browser_url}")


@app.command()
def stop(cache_dir: CacheDir = None, instance: Instance = _DEFAULTS.name) -> None:
    """Stop the instance's server (only the pid recorded by `start`)."""
    try:
        pid = stop_server(instance, layout=Layout.resolve(cache_dir))
    except DbServerError as exc:
        raise _fail(exc) from None
    typer.echo(
        f"Neo4j instance {instance!r} " + ("was not running" if pid is None else f"stopped (pid {pid})")
    )


@app.command()
def status(cache_dir: CacheDir = None, instance: Instance = _DEFAULTS.name) -> None:
    """Say whether the instance runs; if so, its Neo4j and GDS versions. Exit code 3 when it is stopped."""
    try:
        result = server_status(instance, layout=Layout.resolve(cache_dir))
    except DbServerError as exc:
        raise _fail(exc) from None
    if not result.running:
        typer.echo(f"Neo4j instance {instance!r} is not running")
        raise typer.Exit(code=3)
    typer.echo(
        f"Neo4j instance {instance!r} running (pid {result.pid}): Neo4j {result.neo4j_version} Community, "
        f"GDS {result.gds_version}\nBolt:    {result.bolt_uri}\nBrowser: {result.browser_url}"
    )
