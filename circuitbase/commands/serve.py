"""`circuitbase serve` (the GraphQL API under uvicorn) and `circuitbase api-key create|list|revoke`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from circuitbase.commands.common import TRANSCODERS_HELP, fail_on

console = Console(stderr=True)
keys_app = typer.Typer(
    help="API keys (needed for mutations, and for reads with --read-access key).", no_args_is_help=True
)

INSTANCE_HELP = "Local Neo4j instance used when CIRCUITBASE_NEO4J_URI is unset."


def serve_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    read_access: str | None = typer.Option(
        None, help="'open' (default) or 'key' (queries need an API key); env CIRCUITBASE_API_READ_ACCESS."
    ),
    cors_origin: list[str] = typer.Option(
        [], help="Allowed browser origin (repeatable); env CIRCUITBASE_API_CORS_ORIGINS (comma separated)."
    ),
    model: str | None = typer.Option(None, help="Model for ingest jobs started through the API."),
    transcoders: str | None = typer.Option(None, help=f"Transcoder set for ingest jobs: {TRANSCODERS_HELP}"),
    graphs_out: Path = typer.Option(Path("graphs"), help="Where ingest jobs write graph files."),
    device: str = typer.Option(
        "auto", help="Device for ingest jobs and interventions: 'auto', 'cpu' or 'cuda'."
    ),
    intervention_model: list[str] = typer.Option(
        [],
        help="A model the `intervene` query may run (repeatable, paired in order with "
        "--intervention-transcoders); the ingest model and the shipped toy model are always runnable.",
    ),
    intervention_transcoders: list[str] = typer.Option(
        [], help=f"The transcoder set of the --intervention-model at the same place: {TRANSCODERS_HELP}"
    ),
    query_timeout: float = typer.Option(10.0, help="Neo4j transaction timeout per query, seconds."),
    max_page_size: int = typer.Option(100, help="Largest page (first/limit) a query may ask for."),
    instance: str = typer.Option("default", help=INSTANCE_HELP),
) -> None:
    """Serve the GraphQL API (GraphiQL at /graphql, /healthz, /readyz, OpenAPI at /docs)."""
    import uvicorn

    from circuitbase.api.app import ApiConfig, create_app
    from circuitbase.api.interventions import ModelSource
    from circuitbase.api.jobs import IngestSettings
    from circuitbase.api.limits import Limits
    from circuitbase.settings import load_neo4j_settings, open_driver

    with fail_on(console):
        if (model is None) != (transcoders is None):
            raise ValueError("ingest jobs need both --model and --transcoders (or neither)")
        if len(intervention_model) != len(intervention_transcoders):
            raise ValueError("give one --intervention-transcoders for each --intervention-model")
        settings = load_neo4j_settings(instance=instance)
        ingest = IngestSettings(model, transcoders, graphs_out, device) if model and transcoders else None
        config = ApiConfig.from_env(
            read_access=read_access,
            cors_origins=tuple(cors_origin) or None,
            limits=Limits(query_timeout_s=query_timeout, max_page_size=max_page_size),
            ingest=ingest,
            database=settings.database,
            intervention_models=tuple(map(ModelSource, intervention_model, intervention_transcoders)),
            intervention_device=device,
        )
        driver = open_driver(settings)
    try:
        uvicorn.run(create_app(config=config, driver=driver), host=host, port=port)
    finally:
        driver.close()


@keys_app.command("create")
def create_key_command(
    name: str = typer.Argument(..., help="Who or what the key is for."),
    instance: str = typer.Option("default", help=INSTANCE_HELP),
) -> None:
    """Create a key and print it (only this once; the database keeps a salted hash)."""
    from circuitbase.api.auth import create_key
    from circuitbase.settings import load_neo4j_settings, open_driver

    with fail_on(console):
        settings = load_neo4j_settings(instance=instance)
        with open_driver(settings) as driver:
            key_id, key = create_key(driver, name=name, database=settings.database)
    console.print(f"created API key {key_id} ({name}); store it now, it is not shown again:")
    typer.echo(key)


@keys_app.command("list")
def list_keys_command(instance: str = typer.Option("default", help=INSTANCE_HELP)) -> None:
    """List keys: id, name, creation time, revoked."""
    from circuitbase.api.auth import list_keys
    from circuitbase.settings import load_neo4j_settings, open_driver

    with fail_on(console):
        settings = load_neo4j_settings(instance=instance)
        with open_driver(settings) as driver:
            keys = list_keys(driver, database=settings.database)
    table = Table(title="API keys")
    for column in ("id", "name", "created", "revoked"):
        table.add_column(column)
    for k in keys:
        table.add_row(k["id"], k["name"], k["created"], "yes" if k["revoked"] else "no")
    Console().print(table)


@keys_app.command("revoke")
def revoke_key_command(
    key_id: str = typer.Argument(..., help="The key's id (the 12 hex digits after 'cbk_')."),
    instance: str = typer.Option("default", help=INSTANCE_HELP),
) -> None:
    """Revoke a key: requests presenting it are refused from now on."""
    from circuitbase.api.auth import revoke_key
    from circuitbase.settings import load_neo4j_settings, open_driver

    with fail_on(console):
        settings = load_neo4j_settings(instance=instance)
        with open_driver(settings) as driver:
            revoke_key(driver, key_id, database=settings.database)
    console.print(f"revoked API key {key_id}")
