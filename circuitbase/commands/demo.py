"""`circuitbase demo`: the main job end to end on the embedded defaults.

1. Neo4j + Open GDS: install if missing, start the local instance, apply the schema.
2. The toy model with planted circuits and its transcoders (shipped in the package).
3. A prompt set over the toy model's tasks (two-hop lookup, one-hop, name copying, arithmetic) with
   right and wrong answers, attributed and loaded into Neo4j as one pipelined, resumable job.
4. Analysis: supernodes, recurring subcircuits, prompt similarity, hub features.
5. A summary of what was found, where to look (Neo4j Browser, GraphQL), then `serve` unless --no-serve.

Everything is reused on a re-run: graph files and loaded graphs are skipped, analysis results replaced.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from circuitbase.commands.common import fail_on

console = Console()

BROWSER_QUERIES = (
    (
        "Recurring subcircuits by support",
        "MATCH (s:Subcircuit) RETURN s.key, s.support, s.features ORDER BY s.support DESC LIMIT 10",
    ),
    (
        "One prompt's pruned graph",
        "MATCH (g:Graph {complete: true})-[:OF_PROMPT]->(p:Prompt) WITH g, p LIMIT 1\n"
        "MATCH (a:GraphNode)-[:IN_GRAPH]->(g), (a)-[e:EDGE]->(b) RETURN p.text, a, e, b",
    ),
    (
        "Features most shared across graphs",
        "MATCH (f:Feature)<-[:INSTANCE_OF]-(n:FeatureNode) RETURN f.key, count(n) AS graphs "
        "ORDER BY graphs DESC LIMIT 10",
    ),
)
GRAPHQL_QUERIES = (
    "{ subcircuits(first: 5) { edges { node { key support } } } }",
    "{ graphs(first: 5, correct: false) { edges { node { id topToken prompt { text } } } } }",
    '{ compare(split: "correct") { nA nB features { key diff } } }',
)


def _work_dir(model: str) -> Path:
    home = os.environ.get("CIRCUITBASE_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "circuitbase"
    return base / "demo" / model


def _write_prompts(path: Path, n: int) -> Path:
    from circuitbase.engine.toy import toy_prompts

    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(p) for p in toy_prompts(n, seed=0)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _start_neo4j(instance: str) -> None:
    from circuitbase.dbserver.config import InstanceConfig, Layout
    from circuitbase.dbserver.server import start

    layout = Layout.resolve()
    config = layout.load_instance(instance) or InstanceConfig(name=instance)
    status = start(config, layout=layout, log=lambda line: console.print(f"  {line}"))
    console.print(f"  Neo4j at {status.bolt_uri if hasattr(status, 'bolt_uri') else config.bolt_port}")


def demo_command(
    prompts: int = typer.Option(96, help="Prompts in the toy study (cycling over the tasks)."),
    instance: str = typer.Option("default", help="Local Neo4j instance to use (started if needed)."),
    serve: bool = typer.Option(True, help="Serve the GraphQL API and dashboard at the end (Ctrl-C stops)."),
    port: int = typer.Option(8000, help="Port for the API."),
) -> None:
    """Run the main job on the toy model end to end and show what was found."""
    from circuitbase.analysis.compare import Split, compare
    from circuitbase.analysis.run import run_analysis
    from circuitbase.engine.attribution import AttributionConfig
    from circuitbase.engine.models import load_model
    from circuitbase.engine.prompts import read_prompts
    from circuitbase.engine.toy import shipped_paths
    from circuitbase.engine.transcoders import TranscoderSet
    from circuitbase.ingest.loader import IngestConfig
    from circuitbase.ingest.pipeline import ingest_prompts
    from circuitbase.ingest.schema import apply_schema
    from circuitbase.settings import load_neo4j_settings, open_driver

    started = time.perf_counter()
    with fail_on(console):
        console.rule("1/5 Neo4j + Graph Data Science")
        if "CIRCUITBASE_NEO4J_URI" not in os.environ:
            _start_neo4j(instance)
        settings = load_neo4j_settings(instance=instance)
        driver = open_driver(settings)
        apply_schema(driver, database=settings.database)

        console.rule("2/5 Toy model with planted circuits")
        model_dir, transcoder_dir = shipped_paths()
        loaded = load_model(str(model_dir))
        transcoders = TranscoderSet.load(transcoder_dir)
        console.print(f"  model {model_dir}, transcoders {transcoder_dir}")

        console.rule("3/5 Attribution + ingest")
        work = _work_dir("toy")
        prompt_set = read_prompts(_write_prompts(work / "prompts.jsonl", prompts))
        summary = ingest_prompts(
            driver,
            loaded,
            transcoders,
            prompt_set.prompts,
            work / "graphs",
            attribution=AttributionConfig(max_feature_nodes=256),
            config=IngestConfig(model=loaded.name, transcoder_set=transcoders.name, database=settings.database),
        )
        console.print(f"  {summary.loaded} graphs loaded, {summary.skipped} already there")

        console.rule("4/5 Analysis")
        for result in run_analysis(driver, database=settings.database, show_progress=True):
            console.print(f"  {result.step}: {result.seconds:.1f} s  {result.summary}")

        console.rule("5/5 What was found")
        _report(driver, compare(driver, Split(split="correct"), limit=8, database=settings.database), settings)
        console.print(f"\n[bold]demo finished in {time.perf_counter() - started:.0f} s[/bold]")
    if serve:
        from circuitbase.commands.serve import serve_command

        console.print(f"Serving on http://127.0.0.1:{port}/ (Ctrl-C stops)")
        serve_command(port=port, instance=instance)
    driver.close()


def _report(driver, comparison, settings) -> None:
    records, _, _ = driver.execute_query(
        "MATCH (s:Subcircuit) RETURN s.key AS key, s.support AS support, s.features AS features "
        "ORDER BY s.support DESC LIMIT 8",
        database_=settings.database,
    )
    table = Table(title="Top recurring subcircuits")
    for column in ("subcircuit", "support (graphs)", "features"):
        table.add_column(column)
    for r in records:
        table.add_row(str(r["key"]), str(r["support"]), ", ".join(map(str, (r["features"] or [])[:6])))
    console.print(table)
    table = Table(title=f"Right ({comparison.n_a} graphs) vs wrong ({comparison.n_b} graphs): biggest differences")
    for column in ("feature", "share right", "share wrong", "diff"):
        table.add_column(column)
    for row in comparison.features[:8]:
        table.add_row(str(row.get("key")), f"{row.get('p_a', 0):.2f}", f"{row.get('p_b', 0):.2f}", f"{row.get('diff', 0):+.2f}")
    console.print(table)
    console.print("\n[bold]Neo4j Browser[/bold]: open the Browser URL printed above and paste:")
    for title, query in BROWSER_QUERIES:
        console.print(f"  // {title}\n  {query}")
    console.print("\n[bold]GraphQL[/bold] (GraphiQL at /graphql once served):")
    for query in GRAPHQL_QUERIES:
        console.print(f"  {query}")
