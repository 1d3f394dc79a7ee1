"""The `circuitbase` command line: a thin shell over the packages.

Each command group lives in `circuitbase.commands.<name>` and is registered here.
"""

import typer

from circuitbase.commands import (
    analyze,
    attribute,
    contrast,
    db,
    demo,
    ingest,
    intervene,
    neo4j,
    serve,
    train,
    transcoders,
)

app = typer.Typer(
    help="Attribution graphs for many prompts, stored and analysed in Neo4j.",
    no_args_is_help=True,
    add_completion=False,
)

# Command groups register below (one line each).
app.command("demo")(demo.demo_command)
app.add_typer(neo4j.app, name="neo4j")
app.add_typer(db.app, name="db")
app.command("attribute")(attribute.attribute_command)
app.command("intervene")(intervene.intervene_command)
app.command("contrast")(contrast.contrast_command)
app.add_typer(transcoders.app, name="transcoders")
app.command("ingest")(ingest.ingest_command)
app.command("analyze")(analyze.analyze_command)
app.command("compare")(analyze.compare_command)
app.command("train-transcoders")(train.train_transcoders_command)
app.command("label-features")(train.label_features_command)
app.add_typer(train.toy_app, name="toy")
app.command("serve")(serve.serve_command)
app.add_typer(serve.keys_app, name="api-key")


def main() -> None:
    app()
