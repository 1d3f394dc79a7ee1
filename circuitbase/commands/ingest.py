"""`circuitbase ingest`: load attribution graphs into Neo4j, computing them first when given prompts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import yaml
from rich.console import Console
from rich.table import Table

from circuitbase.commands.cluster import (
    RayActors,
    RayAddress,
    RayCpuActors,
    RayCpusPerActor,
    RayGpusPerActor,
    RayInFlight,
    RayOptions,
    ingest_on_cluster,
)
from circuitbase.commands.common import (
    MODEL_HELP,
    TRANSCODERS_HELP,
    BatchSize,
    Device,
    EdgeThreshold,
    Faithfulness,
    KeepFull,
    MaxFeatureNodes,
    MaxRowMemory,
    NodeThreshold,
    Precision,
    attribution_config,
    fail_on,
    load_model_and_transcoders,
)

if TYPE_CHECKING:
    from circuitbase.ingest.loader import IngestSummary

console = Console(stderr=True)


def transcoder_set_name(spec: str) -> str:
    """The set name of a transcoder folder (config.yaml `scan`, else the folder name), or `spec` itself."""
    config = Path(spec) / "config.yaml"
    if not config.is_file():
        return spec
    raw = yaml.safe_load(config.read_text())
    scan = raw.get("scan") if isinstance(raw, dict) else None
    return scan if isinstance(scan, str) else Path(spec).name


def labels_for(transcoders: str | None) -> Path | None:
    """The feature-labels file of a transcoder folder, when it has one (ingest writes it onto :Feature)."""
    from circuitbase.engine.labels import labels_path

    if transcoders is None or not Path(transcoders).is_dir():
        return None
    path = labels_path(transcoders)
    return path if path.is_file() else None


def _print_summary(summary: IngestSummary) -> None:
    table = Table(title=f"ingest job {summary.job_id}: {summary.status}")
    for column in (
        "graphs loaded",
        "skipped",
        "bad",
        "nodes",
        "relationships",
        "seconds",
        "graphs/s",
        "rows/s",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        str(summary.loaded),
        str(summary.skipped),
        str(len(summary.bad)),
        f"{summary.nodes:,}",
        f"{summary.relationships:,}",
        f"{summary.seconds:.1f}",
        f"{summary.graphs_per_second:.2f}",
        f"{summary.rows_per_second:,.0f}",
    )
    console.print(table)
    for line in summary.bad:
        console.print(f"[yellow]skipped[/yellow] {line}")


def _bulk(
    graphs: Path, *, instance: str, model: str | None, transcoders: str | None, skip_bad: bool, progress: bool
) -> IngestSummary:
    """The bulk path of `ingest --graphs DIR --bulk` (see circuitbase.ingest.bulk)."""
    from circuitbase.ingest.bulk import BulkConfig, bulk_import_files
    from circuitbase.ingest.loader import IngestConfig, graph_files, progress_bar

    files = graph_files(graphs)
    accepted = IngestConfig(
        model=model,
        transcoder_set=None if transcoders is None else transcoder_set_name(transcoders),
        skip_bad=skip_bad,
        labels=labels_for(transcoders),
    )
    with progress_bar(show=progress, total=len(files)) as bar:
        result = bulk_import_files(
            files,
            instance=instance,
            config=BulkConfig(ingest=accepted),
            parameters={"graphs": str(graphs)},
            log=console.print,
            each=bar.advance,
        )
    console.print(
        f"bulk: CSV files {result.csv_seconds:.1f}s, neo4j-admin import {result.import_seconds:.1f}s"
    )
    if accepted.labels is not None:
        from circuitbase.ingest.labels import write_feature_labels
        from circuitbase.settings import load_neo4j_settings, open_driver

        with open_driver(load_neo4j_settings(instance=instance)) as driver:
            result.summary.features_labelled = write_feature_labels(driver, accepted.labels)
    return result.summary


def ingest_command(
    prompts: Path | None = typer.Argument(
        None, help="Prompt file to attribute and load (.jsonl, .csv or text); or use --graphs."
    ),
    graphs: Path | None = typer.Option(
        None, help="Load the graph files (.safetensors, Neuronpedia .json) of this directory instead."
    ),
    model: str | None = typer.Option(
        None, help=f"Model to attribute with: {MODEL_HELP} With --graphs: the expected model name."
    ),
    transcoders: str | None = typer.Option(
        None,
        help=f"{TRANSCODERS_HELP} Default with PROMPTS: MODEL's own set, trained on first use. "
        "With --graphs: a directory or set name every graph must use.",
    ),
    graphs_out: Path = typer.Option(Path("graphs"), help="Where attribution writes graph files."),
    device: Device = "auto",
    batch_size: BatchSize = 64,
    max_feature_nodes: MaxFeatureNodes = 4096,
    node_threshold: NodeThreshold = 0.8,
    edge_threshold: EdgeThreshold = 0.98,
    max_row_memory_mb: MaxRowMemory = 4096,
    dtype: Precision = "float32",
    faithfulness: Faithfulness = True,
    keep_full: KeepFull = False,
    queue_size: int = typer.Option(8, help="Graphs attribution may run ahead of the database writer."),
    writers: int = typer.Option(
        1, min=1, help="Graphs written at once, each in its own transaction (deadlocks are retried)."
    ),
    skip_bad: bool = typer.Option(False, help="Go on past bad prompts/graph files and list them at the end."),
    instance: str = typer.Option(
        "default", help="Local Neo4j instance used when CIRCUITBASE_NEO4J_URI is unset."
    ),
    progress: bool = typer.Option(True, help="Show the progress bar."),
    bulk: bool = typer.Option(
        False,
        help="With --graphs: first load into the EMPTY local --instance with neo4j-admin import "
        "(stops and restarts it).",
    ),
    ray: RayAddress = None,
    ray_actors: RayActors = 0,
    ray_gpus_per_actor: RayGpusPerActor = 1.0,
    ray_cpu_actors: RayCpuActors = 0,
    ray_cpus_per_actor: RayCpusPerActor = 1,
    ray_in_flight: RayInFlight = 2,
) -> None:
    """Load attribution graphs into Neo4j as one resumable job (complete graphs are skipped)."""
    from circuitbase.ingest.loader import IngestConfig, graph_files, ingest_files
    from circuitbase.ingest.schema import apply_schema
    from circuitbase.settings import load_neo4j_settings, open_driver

    if (prompts is None) == (graphs is None):
        console.print("[red]error:[/red] give either a PROMPTS file or --graphs DIR (not both)")
        raise typer.Exit(2)
    if bulk and graphs is None:
        console.print("[red]error:[/red] --bulk loads graph files: give --graphs DIR")
        raise typer.Exit(2)
    with fail_on(console):
        if bulk:
            assert graphs is not None
            _print_summary(
                _bulk(
                    graphs,
                    instance=instance,
                    model=model,
                    transcoders=transcoders,
                    skip_bad=skip_bad,
                    progress=progress,
                )
            )
            return
        settings = load_neo4j_settings(instance=instance)
        config = IngestConfig(
            model=None if prompts is not None else model,
            transcoder_set=None
            if prompts is not None or transcoders is None
            else transcoder_set_name(transcoders),
            skip_bad=skip_bad,
            database=settings.database,
            labels=labels_for(transcoders),
            writers=writers,
        )
        if graphs is not None:
            files = graph_files(graphs)
            with open_driver(settings) as driver:
                apply_schema(driver, database=settings.database)
                summary = ingest_files(
                    driver, files, config=config, show_progress=progress, parameters={"graphs": str(graphs)}
                )
        else:
            from circuitbase.engine.prompts import read_prompts
            from circuitbase.engine.runner import GraphFiles
            from circuitbase.ingest.pipeline import ingest_prompts

            if model is None:
                raise ValueError("attributing prompts needs --model (and --transcoders, or its default set)")
            assert prompts is not None
            prompt_set = read_prompts(prompts, skip_bad=skip_bad)
            attribution = attribution_config(
                batch_size=batch_size,
                max_feature_nodes=max_feature_nodes,
                node_threshold=node_threshold,
                edge_threshold=edge_threshold,
                max_row_memory_mb=max_row_memory_mb,
                check_faithfulness=faithfulness,
            )
            if ray is not None:
                summary = ingest_on_cluster(
                    RayOptions(
                        ray, ray_actors, ray_gpus_per_actor, ray_cpu_actors, ray_cpus_per_actor, ray_in_flight
                    ),
                    prompt_set, graphs_out, settings=settings, config=config, attribution=attribution,
                    files=GraphFiles(keep_full=keep_full),
                    model=model, transcoders=transcoders, device=device, precision=dtype, progress=progress,
                    console=console,
                )  # fmt: skip
                _print_summary(summary)
                return
            loaded, transcoder_set, folder = load_model_and_transcoders(
                model, transcoders, device=device, precision=dtype
            )
            config = replace(config, labels=labels_for(str(folder)))
            with open_driver(settings) as driver:
                apply_schema(driver, database=settings.database)
                summary = ingest_prompts(
                    driver,
                    loaded,
                    transcoder_set,
                    prompt_set.prompts,
                    graphs_out,
                    attribution=attribution,
                    config=config,
                    files=GraphFiles(keep_full=keep_full),
                    queue_size=queue_size,
                    rejected=prompt_set.rejected,
                    show_progress=progress,
                )
        _print_summary(summary)
