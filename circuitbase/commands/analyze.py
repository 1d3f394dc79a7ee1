"""`circuitbase analyze` and `circuitbase compare`: recurring mechanisms across the loaded graphs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from circuitbase.commands.common import fail_on

if TYPE_CHECKING:
    from circuitbase.analysis.compare import Comparison

console = Console(stderr=True)


def analyze_command(
    step: str = typer.Option(
        "all", help="communities, subcircuits, similarity, hubs, or all (in that order)."
    ),
    min_weight: float = typer.Option(
        0.05, help="Subcircuits: smallest |edge weight| that counts as present."
    ),
    min_support: int = typer.Option(
        2, help="Subcircuits: least number of graphs a subcircuit must occur in."
    ),
    min_support_fraction: float = typer.Option(
        0.05, help="Subcircuits: ... or this share of graphs, if more."
    ),
    min_specificity: float = typer.Option(
        0.6, help="Subcircuits: least share of each member feature's graphs a subcircuit must occur in."
    ),
    max_subcircuits: int = typer.Option(500, help="Subcircuits: how many (best ranked) are written."),
    min_graphs: int = typer.Option(
        2, help="Communities/hubs: aggregated edges seen in fewer graphs are ignored."
    ),
    algorithm: str = typer.Option("leiden", help="Communities: leiden or louvain."),
    resolution: float = typer.Option(1.0, help="Communities: Leiden resolution (gamma)."),
    top_k: int = typer.Option(10, help="Similarity: similar graphs kept per graph."),
    instance: str = typer.Option(
        "default", help="Local Neo4j instance used when CIRCUITBASE_NEO4J_URI is unset."
    ),
    progress: bool = typer.Option(True, help="Show progress."),
) -> None:
    """Find supernodes, recurring subcircuits, similar prompts and hub features; write them to Neo4j."""
    from circuitbase.analysis.communities import CommunityConfig
    from circuitbase.analysis.hubs import HubConfig
    from circuitbase.analysis.run import AnalysisConfig, resolve_steps, run_analysis
    from circuitbase.analysis.similarity import SimilarityConfig
    from circuitbase.analysis.subcircuits import SubcircuitConfig
    from circuitbase.ingest.schema import apply_schema
    from circuitbase.settings import load_neo4j_settings, open_driver

    with fail_on(console):
        config = AnalysisConfig(
            communities=CommunityConfig(algorithm=algorithm, min_graphs=min_graphs, resolution=resolution),
            subcircuits=SubcircuitConfig(
                min_weight=min_weight,
                min_support=min_support,
                min_support_fraction=min_support_fraction,
                min_specificity=min_specificity,
                max_subcircuits=max_subcircuits,
            ),
            similarity=SimilarityConfig(top_k=top_k),
            hubs=HubConfig(min_graphs=min_graphs),
        )
        steps = resolve_steps(step)
        settings = load_neo4j_settings(instance=instance)
        with open_driver(settings) as driver:
            apply_schema(driver, database=settings.database)
            results = run_analysis(
                driver, steps=steps, config=config, database=settings.database, show_progress=progress
            )
        table = Table(title="analysis")
        for column in ("step", "seconds", "summary"):
            table.add_column(column, justify="left" if column != "seconds" else "right")
        for result in results:
            summary = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.summary.items()
            )
            table.add_row(result.step, f"{result.seconds:.2f}", summary)
        console.print(table)


def _print_comparison(result: Comparison) -> None:
    a, b = result.split.names()
    columns = ("k_a", "k_b", "p_a", "p_b", "diff", "log_odds", "z")
    for title, rows, name in (
        ("features", result.features, lambda r: r["feature"]),
        (
            "subcircuits",
            result.subcircuits,
            lambda r: (
                f"#{r['rank']} "
                + ", ".join(f"{s}->{t}" for s, t in zip(r["sources"], r["targets"], strict=True))
            ),
        ),
    ):
        table = Table(title=f"{title}: A = {a} ({result.n_a} graphs) vs B = {b} ({result.n_b} graphs)")
        table.add_column(title[:-1], overflow="fold")
        for column in columns:
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(
                name(row), *(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns)
            )
        console.print(table)


def compare_command(
    a_tag: str | None = typer.Option(None, help="Side A: prompts with this tag."),
    b_tag: str | None = typer.Option(None, help="Side B: prompts with this tag."),
    split: str | None = typer.Option(None, help="'correct': A = correct graphs, B = incorrect ones."),
    limit: int = typer.Option(20, help="Rows per table."),
    min_graphs: int = typer.Option(2, help="Features seen in fewer graphs (both sides) are left out."),
    instance: str = typer.Option(
        "default", help="Local Neo4j instance used when CIRCUITBASE_NEO4J_URI is unset."
    ),
) -> None:
    """Features and recurring subcircuits that differ most between two prompt sets, with effect sizes."""
    from circuitbase.analysis.compare import Split, compare
    from circuitbase.settings import load_neo4j_settings, open_driver

    with fail_on(console):
        chosen = Split(split=split, a_tag=a_tag, b_tag=b_tag)
        settings = load_neo4j_settings(instance=instance)
        with open_driver(settings) as driver:
            result = compare(driver, chosen, limit=limit, min_graphs=min_graphs, database=settings.database)
        _print_comparison(result)
