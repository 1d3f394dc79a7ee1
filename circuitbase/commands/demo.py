"""`circuitbase demo`: the main job end to end on the embedded defaults.

1. Neo4j + Open GDS: install if missing, start the local instance, apply the schema.
2. The model and its transcoders: the toy model with planted circuits (shipped in the package), or with
   `--model smollm2` SmolLM2-135M-Instruct with its default transcoders (trained on first use).
3. A prompt set with right and wrong answers, attributed and loaded into Neo4j as one pipelined,
   resumable job: the toy model's tasks (two-hop lookup, one-hop, name copying, arithmetic), or for
   SmolLM2 `engine.study_prompts` (two-hop facts, arithmetic, name copying).
4. Analysis: supernodes, recurring subcircuits and their causal support, prompt similarity, hub features.
5. A summary of what was found, where to look (Neo4j Browser, GraphQL), then `serve` unless --no-serve.

Everything is reused on a re-run: graph files and loaded graphs are skipped, analysis results replaced.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from circuitbase.commands.common import fail_on, load_model_and_transcoders

if TYPE_CHECKING:
    import neo4j

    from circuitbase.analysis.compare import Comparison

console = Console()

BROWSER_QUERIES = (
    (
        "Recurring subcircuits by rank",
        "MATCH (s:Subcircuit) RETURN s.key, s.support, s.sources, s.targets ORDER BY s.rank LIMIT 10",
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
    "{ subcircuits(first: 5) { edges { node { key support edges { source target } } } } }",
    "{ graphs(filter: {correct: false}, first: 5) { edges { node { id promptText topToken } } } }",
    '{ compareSets(sides: {split: "correct"}, limit: 5) { nA nB features { key pA pB diff } } }',
)


def _work_dir(model: str) -> Path:
    from circuitbase.paths import cache_home

    return cache_home() / "demo" / model


MODELS = ("toy", "smollm2")


def write_demo_prompts(path: Path, model: str, n: int) -> Path:
    """Toy: `n` random toy prompts plus every prompt the toy model was never taught (its wrong answers),
    each text once (a repeat of an earlier draw is dropped, so fewer than `n` may be drawn). SmolLM2: the
    fixed real-language study (`n` is not used)."""
    from circuitbase.engine.study_prompts import study_prompts
    from circuitbase.engine.toy import fixed_examples, toy_prompts

    if model == "toy":
        untaught = [e for e in fixed_examples() if {"unknown", "held_out"} & set(e["tags"])]
        distinct: dict[str, dict] = {}
        for prompt in [*toy_prompts(n, seed=0), *untaught]:
            distinct.setdefault(prompt["prompt"], prompt)
        prompts = list(distinct.values())
    else:
        prompts = study_prompts()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts), encoding="utf-8")
    return path


def _model_and_transcoders(model: str) -> tuple[Any, Any, Path]:
    """The loaded model, its transcoder set and the set's folder (SmolLM2's is trained on first use)."""
    from circuitbase.engine.toy import shipped_paths

    model_dir, transcoder_dir = shipped_paths() if model == "toy" else (model, None)
    loaded, transcoders, folder = load_model_and_transcoders(str(model_dir), transcoder_dir, device="cpu")
    console.print(f"  model {loaded.name}, transcoders {folder}")
    return loaded, transcoders, folder


def _start_neo4j(instance: str) -> str:
    """Start (or find running) the local instance; returns the Browser address."""
    from circuitbase.dbserver.config import InstanceConfig, Layout
    from circuitbase.dbserver.server import start

    layout = Layout.resolve()
    config = layout.load_instance(instance) or InstanceConfig(name=instance)
    status = start(config, layout=layout, log=lambda line: console.print(f"  {line}"))
    console.print(f"  Neo4j {status.bolt_uri}, Browser {status.browser_url}")
    return status.browser_url


def demo_command(
    model: str = typer.Option(
        "toy",
        help="toy (the shipped model with planted circuits) or smollm2 (SmolLM2-135M-Instruct; its "
        "transcoders are trained on first use, see README).",
    ),
    prompts: int = typer.Option(96, help="Prompts in the toy study (cycling over the tasks)."),
    instance: str = typer.Option("default", help="Local Neo4j instance to use (started if needed)."),
    serve: bool = typer.Option(True, help="Serve the GraphQL API and dashboard at the end (Ctrl-C stops)."),
    port: int = typer.Option(8000, help="Port for the API."),
) -> None:
    """Run the main job end to end (toy model by default) and show what was found."""
    from circuitbase.analysis.compare import Split, compare
    from circuitbase.analysis.run import run_analysis
    from circuitbase.commands.ingest import labels_for
    from circuitbase.engine.attribution import AttributionConfig
    from circuitbase.engine.prompts import read_prompts
    from circuitbase.engine.shelf import ModelShelf, with_shipped_toy
    from circuitbase.ingest.loader import IngestConfig
    from circuitbase.ingest.pipeline import ingest_prompts
    from circuitbase.ingest.schema import apply_schema
    from circuitbase.settings import load_neo4j_settings, open_driver

    started = time.perf_counter()
    with fail_on(console):
        if model not in MODELS:
            raise ValueError(f"unknown demo model {model!r}: use one of {', '.join(MODELS)}")
        console.rule("1/5 Neo4j + Graph Data Science")
        browser = "the Neo4j Browser of your server"
        if "CIRCUITBASE_NEO4J_URI" not in os.environ:
            browser = _start_neo4j(instance)
        settings = load_neo4j_settings(instance=instance)
        driver = open_driver(settings)
        apply_schema(driver, database=settings.database)

        console.rule("2/5 Model and transcoders")
        loaded, transcoders, transcoder_dir = _model_and_transcoders(model)

        console.rule("3/5 Attribution + ingest")
        work = _work_dir(model)
        prompt_set = read_prompts(write_demo_prompts(work / "prompts.jsonl", model, prompts))
        summary = ingest_prompts(
            driver,
            loaded,
            transcoders,
            prompt_set.prompts,
            work / "graphs",
            attribution=AttributionConfig(max_feature_nodes=256),
            config=IngestConfig(
                model=loaded.name,
                transcoder_set=transcoders.name,
                database=settings.database,
                labels=labels_for(str(transcoder_dir)),
            ),
        )
        console.print(f"  {summary.loaded} graphs loaded, {summary.skipped} already there")

        console.rule("4/5 Analysis")
        models = ModelShelf(sources=with_shipped_toy(()), held=[(loaded, transcoders)])
        for result in run_analysis(driver, database=settings.database, show_progress=True, models=models):
            console.print(f"  {result.step}: {result.seconds:.1f} s  {result.summary}")

        console.rule("5/5 What was found")
        comparison = compare(driver, Split(split="correct"), limit=8, database=settings.database)
        _report(driver, comparison, database=settings.database, browser=browser, port=port)
        console.print(f"\n[bold]demo finished in {time.perf_counter() - started:.0f} s[/bold]")
    if serve:
        from circuitbase.commands.serve import serve_command

        driver.close()
        console.print(f"Serving on http://127.0.0.1:{port}/ (Ctrl-C stops)")
        serve_command(
            host="127.0.0.1", port=port, read_access=None, cors_origin=[], model=None,
            transcoders=None, graphs_out=Path("graphs"), device="auto", query_timeout=10.0,
            max_page_size=100, instance=instance,
            intervention_model=[] if model == "toy" else [model],  # the toy model is always runnable
            intervention_transcoders=[] if model == "toy" else [str(transcoder_dir)],
        )  # fmt: skip
    else:
        driver.close()


def _report(driver: neo4j.Driver, comparison: Comparison, *, database: str, browser: str, port: int) -> None:
    from circuitbase.commands.analyze import subcircuit_table

    console.print(subcircuit_table(driver, database=database, limit=8))
    table = Table(
        title=f"Right ({comparison.n_a} graphs) vs wrong ({comparison.n_b} graphs): biggest differences"
    )
    for column in ("feature", "share right", "share wrong", "diff"):
        table.add_column(column)
    for row in comparison.features[:8]:
        table.add_row(row["feature"], f"{row['p_a']:.2f}", f"{row['p_b']:.2f}", f"{row['diff']:+.2f}")
    console.print(table)
    console.print(f"\n[bold]Neo4j Browser[/bold] {browser} — paste:")
    for title, query in BROWSER_QUERIES:
        console.print(f"  // {title}\n  {query}", markup=False, highlight=False)
    console.print(
        f"\n[bold]GraphQL[/bold] http://127.0.0.1:{port}/graphql (dashboard: http://127.0.0.1:{port}/):"
    )
    for query in GRAPHQL_QUERIES:
        console.print(f"  {query}", markup=False, highlight=False)
