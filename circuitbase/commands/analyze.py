"""`circuitbase analyze` and `circuitbase compare`: recurring mechanisms across the loaded graphs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from circuitbase.commands.common import MODEL_HELP, TRANSCODERS_HELP, fail_on

if TYPE_CHECKING:
    import neo4j

    from circuitbase.analysis.compare import Comparison
    from circuitbase.analysis.run import StepResult

console = Console(stderr=True)


def analyze_command(
    step: str = typer.Option(
        "all",
        help="faithfulness, communities, subcircuits, causal, similarity, hubs, or all (in that order).",
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
    subset_tolerance: float = typer.Option(
        0.1,
        min=0.0,
        max=1.0,
        help="Subcircuits: drop one when a larger one holding all its edges occurs in at least "
        "(1 - this) of its graphs (0: only when in all of them).",
    ),
    faithfulness: bool = typer.Option(
        True,
        help="Faithfulness: check the graphs that have no score yet on the real model, from their files "
        "(skipped by --no-faithfulness; 14 forwards per graph). Uses the --model sources as causal does.",
    ),
    recheck_faithfulness: bool = typer.Option(
        False, help="Faithfulness: check every graph with a file again, not only those without a score."
    ),
    causal: bool = typer.Option(
        True,
        help="Causal support: ablate each subcircuit in the graphs it occurs in on the real model "
        "(skipped by --no-causal; one forward per occurrence).",
    ),
    causal_threshold: float = typer.Option(
        0.15, help="Causal: an occurrence matters when ablating removes this share of the answer's lead."
    ),
    min_causal_support: float = typer.Option(
        0.0, help="Causal: delete subcircuits whose measured causal support is below this; re-rank the rest."
    ),
    model: list[str] = typer.Option(
        [],
        help="Faithfulness and causal: a model the graphs were made with (repeatable; the shipped toy is "
        f"always there): {MODEL_HELP}",
    ),
    transcoders: list[str] = typer.Option(
        [],
        help="Faithfulness and causal: the transcoder set of the --model at the same place (none: each "
        f"model's default set). {TRANSCODERS_HELP}",
    ),
    device: str = typer.Option("auto", help="Faithfulness and causal: auto, cpu or cuda."),
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
    top: int = typer.Option(10, help="Top recurring subcircuits shown at the end."),
) -> None:
    """Find supernodes, recurring subcircuits (and their causal support), similar prompts and hub
    features; write them to Neo4j."""
    from circuitbase.analysis.causal import CausalConfig
    from circuitbase.analysis.communities import CommunityConfig
    from circuitbase.analysis.faithfulness import FaithfulnessStepConfig
    from circuitbase.analysis.hubs import HubConfig
    from circuitbase.analysis.run import AnalysisConfig, resolve_steps, run_analysis
    from circuitbase.analysis.similarity import SimilarityConfig
    from circuitbase.analysis.subcircuits import SubcircuitConfig
    from circuitbase.engine.shelf import ModelSource
    from circuitbase.ingest.schema import apply_schema
    from circuitbase.settings import load_neo4j_settings, open_driver

    with fail_on(console):
        if transcoders and len(transcoders) != len(model):
            raise ValueError("give one --transcoders for each --model, or none (each model's default set)")
        sources = [ModelSource(m, t) for m, t in zip(model, transcoders or [None] * len(model), strict=True)]
        config = AnalysisConfig(
            faithfulness=FaithfulnessStepConfig(recheck=recheck_faithfulness),
            communities=CommunityConfig(algorithm=algorithm, min_graphs=min_graphs, resolution=resolution),
            subcircuits=SubcircuitConfig(
                min_weight=min_weight,
                min_support=min_support,
                min_support_fraction=min_support_fraction,
                min_specificity=min_specificity,
                max_subcircuits=max_subcircuits,
                subset_tolerance=subset_tolerance,
            ),
            causal=CausalConfig(
                threshold=causal_threshold,
                min_causal_support=min_causal_support,
                sources=tuple(sources),
                device=device,
            ),
            similarity=SimilarityConfig(top_k=top_k),
            hubs=HubConfig(min_graphs=min_graphs),
        )
        config.causal.check()
        skipped = {name for name, run in (("causal", causal), ("faithfulness", faithfulness)) if not run}
        steps = [s for s in resolve_steps(step) if s not in skipped]
        if not steps:
            raise ValueError(f"--step {step} with --no-{step} leaves nothing to run")
        settings = load_neo4j_settings(instance=instance)
        with open_driver(settings) as driver:
            apply_schema(driver, database=settings.database)
            results = run_analysis(
                driver, steps=steps, config=config, database=settings.database, show_progress=progress
            )
            _print_steps(results)
            if {"subcircuits", "causal"} & set(steps) and top > 0:
                console.print(subcircuit_table(driver, database=settings.database, limit=top))


def _print_steps(results: list[StepResult]) -> None:
    table = Table(title="analysis")
    for column in ("step", "seconds", "summary"):
        table.add_column(column, justify="left" if column != "seconds" else "right")
    for result in results:
        summary = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.summary.items()
        )
        done = {"causal": "graphs_measured", "faithfulness": "graphs_checked"}.get(result.step)
        if done and result.summary[done]:
            summary += f", seconds_per_graph={result.seconds / result.summary[done]:.3g}"
        table.add_row(result.step, f"{result.seconds:.2f}", summary)
    console.print(table)


def _display_names(driver: neo4j.Driver, keys: set[str], database: str) -> dict[str, str]:
    """Token keys read as their text (quoted); feature keys keep their key, plus a label when there is one."""
    records, _, _ = driver.execute_query(
        "UNWIND $keys AS key OPTIONAL MATCH (t:Token {key: key}) OPTIONAL MATCH (f:Feature {key: key}) "
        "RETURN key, t.text AS text, f.label AS label",
        {"keys": sorted(keys)},
        database_=database,
    )
    names = {}
    for r in records:
        if r["text"] is not None:
            names[r["key"]] = repr(r["text"])
        elif r["label"]:
            names[r["key"]] = f"{r['key']} ({r['label']})"
    return names


def subcircuit_table(driver: neo4j.Driver, *, database: str, limit: int) -> Table:
    """The `limit` best ranked subcircuits: support, causal support (with the occurrences measured; '-'
    when not measured) and their first 4 edges in words."""
    from circuitbase.analysis.queries import run_query

    table = Table(title="Top recurring subcircuits")
    for column in ("rank", "support (graphs)", "causal support", "edges (source -> target)"):
        table.add_column(column)
    rows = run_query(driver, "subcircuits_top", database=database, limit=limit)
    names = _display_names(driver, {k for r in rows for k in [*r["sources"], *r["targets"]]}, database)
    for row in rows:
        pairs = zip(row["sources"], row["targets"], strict=True)
        edges = [f"{names.get(a, a)} -> {names.get(b, b)}" for a, b in pairs]
        measured = row["causal_support"] is not None
        support = f"{row['causal_support']:.2f} of {row['causal_occurrences']}" if measured else "-"
        table.add_row(str(row["rank"]), str(row["support"]), support, "\n".join(edges[:4]))
    return table


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_strata(result: Comparison) -> None:
    a, b = result.split.names()
    table = Table(title=f"strata (within {result.within}): A = {a}, B = {b}")
    table.add_column("stratum", overflow="fold")
    for column in ("A", "B"):
        table.add_column(column, justify="right")
    table.add_column("")
    for s in result.strata:
        table.add_row(s.name, str(s.n_a), str(s.n_b), "one side only: left out" if s.one_sided else "")
    console.print(table)
    if result.fully_confounded:
        console.print("[bold red]no stratum holds both sides: nothing can be compared within a task[/]")
    if result.confounded_tags:
        tags = ", ".join(f"{t.name} (A {t.n_a}, B {t.n_b})" for t in result.confounded_tags)
        console.print(f"[bold yellow]split confounded with tags[/] (one side only): {tags}", highlight=False)


def _print_comparison(result: Comparison, *, all_rows: bool) -> None:
    a, b = result.split.names()
    measures = {"diff": ("diff", "+.2f"), "MH diff": ("mh_diff", "+.2f"), "z (CMH)": ("test_z", ".2f")}
    measures["q (BH)"] = ("q_value", ".2g")
    shown = "all rows" if all_rows else f"rows with q < {result.fdr:g}"
    for title, rows, tested, passing in (
        ("features", result.features, result.features_tested, result.features_passing),
        ("subcircuits", result.subcircuits, result.subcircuits_tested, result.subcircuits_passing),
    ):
        table = Table(
            title=f"{title}: A = {a} ({result.n_a} graphs) vs B = {b} ({result.n_b} graphs)",
            caption=f"{tested} tested, {passing} with q < {result.fdr:g}; showing {len(rows)} ({shown})",
        )
        if title == "features":
            ids = [r["feature"] for r in rows]
            table.add_column("feature", no_wrap=True, min_width=max(map(len, ids), default=7))
            table.add_column("label", overflow="fold", ratio=1)
            names = [(r["feature"], r["label"] or "") for r in rows]
        else:
            table.add_column("rank", justify="right", no_wrap=True)
            table.add_column("edges (source -> target)", no_wrap=True)
            names = [
                (
                    f"#{r['rank']}",
                    "\n".join(f"{s} -> {t}" for s, t in zip(r["sources"], r["targets"], strict=True)),
                )
                for r in rows
            ]
        for column in ("A", "B", *measures):
            table.add_column(column, justify="right", no_wrap=True)
        for row, name in zip(rows, names, strict=True):
            counts = (f"{row['k_a']}/{row['n_a']}", f"{row['k_b']}/{row['n_b']}")
            table.add_row(*name, *counts, *(_cell(row[c], spec) for c, spec in measures.values()))
        console.print(table)


def compare_command(
    a_tag: str | None = typer.Option(None, help="Side A: prompts with this tag."),
    b_tag: str | None = typer.Option(None, help="Side B: prompts with this tag."),
    split: str | None = typer.Option(None, help="'correct': A = correct graphs, B = incorrect ones."),
    within: str | None = typer.Option(
        None,
        help="Strata: tags (prompt tag sets; default for --split), dataset, none (default for tags), "
        "or a tag prefix.",
    ),
    fdr: float = typer.Option(0.05, help="False-discovery rate: rows with a BH q-value below it are shown."),
    all_rows: bool = typer.Option(False, help="Show every row, whatever its q-value."),
    limit: int = typer.Option(20, help="Rows per table."),
    min_graphs: int = typer.Option(2, help="Features seen in fewer graphs (both sides) are not tested."),
    instance: str = typer.Option(
        "default", help="Local Neo4j instance used when CIRCUITBASE_NEO4J_URI is unset."
    ),
) -> None:
    """Features and recurring subcircuits whose presence differs between two prompt sets, tested within
    tasks (Mantel-Haenszel) with Benjamini-Hochberg q-values."""
    from circuitbase.analysis.compare import Split, compare
    from circuitbase.settings import load_neo4j_settings, open_driver

    with fail_on(console):
        chosen = Split(split=split, a_tag=a_tag, b_tag=b_tag)
        settings = load_neo4j_settings(instance=instance)
        with open_driver(settings) as driver:
            result = compare(
                driver,
                chosen,
                within=within,
                fdr=fdr,
                all_rows=all_rows,
                limit=limit,
                min_graphs=min_graphs,
                database=settings.database,
            )
        _print_strata(result)
        _print_comparison(result, all_rows=all_rows)
