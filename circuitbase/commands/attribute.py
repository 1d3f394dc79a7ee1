"""`circuitbase attribute`: attribution graphs for a file of prompts."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from circuitbase.commands.cluster import (
    RayActors,
    RayAddress,
    RayCpuActors,
    RayCpusPerActor,
    RayGpusPerActor,
    RayInFlight,
    RayOptions,
    attribute_on_cluster,
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

console = Console(stderr=True)


def attribute_command(
    prompts: Path = typer.Argument(..., help="Prompt file: .jsonl, .csv (with a 'prompt' column) or text."),
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    transcoders: str | None = typer.Option(
        None,
        help=f"{TRANSCODERS_HELP} Default: MODEL's own set, trained on first use (SmolLM2 on a 2-core CPU: "
        "see README) and cached.",
    ),
    out: Path = typer.Option(Path("graphs"), help="Directory for graph files (re-runs skip existing ones)."),
    device: Device = "auto",
    batch_size: BatchSize = 64,
    max_feature_nodes: MaxFeatureNodes = 4096,
    node_threshold: NodeThreshold = 0.8,
    edge_threshold: EdgeThreshold = 0.98,
    max_row_memory_mb: MaxRowMemory = 4096,
    dtype: Precision = "float32",
    faithfulness: Faithfulness = True,
    neuronpedia: bool = typer.Option(True, help="Also write each graph as Neuronpedia graph JSON."),
    keep_full: KeepFull = False,
    skip_bad: bool = typer.Option(False, help="Skip malformed prompt lines (listed at the end)."),
    ray: RayAddress = None,
    ray_actors: RayActors = 0,
    ray_gpus_per_actor: RayGpusPerActor = 1.0,
    ray_cpu_actors: RayCpuActors = 0,
    ray_cpus_per_actor: RayCpusPerActor = 1,
    ray_in_flight: RayInFlight = 2,
) -> None:
    """Compute one attribution graph per prompt and write it to OUT."""
    from circuitbase.engine.prompts import read_prompts
    from circuitbase.engine.runner import GraphFiles, RunSummary, iter_attribute

    with fail_on(console):
        prompt_set = read_prompts(prompts, skip_bad=skip_bad)
        config = attribution_config(
            batch_size=batch_size,
            max_feature_nodes=max_feature_nodes,
            node_threshold=node_threshold,
            edge_threshold=edge_threshold,
            max_row_memory_mb=max_row_memory_mb,
            check_faithfulness=faithfulness,
        )
        summary = RunSummary()
        files = GraphFiles(neuronpedia=neuronpedia, keep_full=keep_full)
        if ray is not None:
            attribute_on_cluster(
                RayOptions(
                    ray, ray_actors, ray_gpus_per_actor, ray_cpu_actors, ray_cpus_per_actor, ray_in_flight
                ),
                prompt_set.prompts, out, config=config, files=files, summary=summary, model=model,
                transcoders=transcoders, device=device, precision=dtype, console=console,
            )  # fmt: skip
        else:
            loaded, transcoder_set, _folder = load_model_and_transcoders(
                model, transcoders, device=device, precision=dtype
            )
            for _ in iter_attribute(
                loaded,
                transcoder_set,
                prompt_set.prompts,
                out,
                config=config,
                files=files,
                summary=summary,
            ):
                pass
        console.print(
            f"{summary.written} graphs written, {summary.skipped} already there, "
            f"{summary.graphs_per_second:.2f} graphs/s -> {out}"
        )
        for line in prompt_set.rejected:
            console.print(f"[yellow]skipped[/yellow] {line}")
