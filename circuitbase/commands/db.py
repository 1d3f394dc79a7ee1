"""`circuitbase db init`: apply the graph schema (constraints, indexes) to the configured Neo4j."""

from pathlib import Path
from typing import Annotated

import typer

from circuitbase.dbserver.errors import DbServerError
from circuitbase.ingest.schema import SchemaError, apply_schema
from circuitbase.settings import load_neo4j_settings, open_driver

app = typer.Typer(help="Manage the circuitbase graph database.", no_args_is_help=True)


@app.command()
def init(
    instance: Annotated[
        str, typer.Option(help="Local instance used when CIRCUITBASE_NEO4J_URI is unset.")
    ] = "default",
    cache_dir: Annotated[
        Path | None, typer.Option(help="Root of local instances (see `neo4j start`).")
    ] = None,
) -> None:
    """Create the schema's constraints and indexes (idempotent: existing ones are kept)."""
    try:
        settings = load_neo4j_settings(instance=instance, cache_dir=cache_dir)
        with open_driver(settings) as driver:
            applied = apply_schema(driver, database=settings.database)
    except (DbServerError, SchemaError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"schema applied to {settings.uri}: {len(applied)} statements")
