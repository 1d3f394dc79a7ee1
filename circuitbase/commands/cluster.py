"""`--ray` for `attribute` and `ingest`: the options, and the two jobs run on a Ray cluster's actors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from circuitbase.engine.attribution import AttributionConfig
    from circuitbase.engine.prompts import Prompt, PromptSet
    from circuitbase.engine.ray_pool import WorkerPool
    from circuitbase.engine.runner import GraphFiles, RunSummary
    from circuitbase.ingest.loader import IngestConfig, IngestSummary
    from circuitbase.settings import Neo4jSettings

RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Attribute on a Ray cluster: 'auto' (the one `ray start` runs here, or RAY_ADDRESS), "
        "HOST:PORT or ray://HOST:PORT, or 'local' (a Ray inside this process). Needs circuitbase[ray].",
    ),
]
RayActors = Annotated[
    int, typer.Option("--ray-actors", min=0, help="GPU actors (0: one per GPU share in the cluster).")
]
RayGpusPerActor = Annotated[
    float, typer.Option("--ray-gpus-per-actor", help="GPU share of each actor (0.5: two actors per GPU).")
]
RayCpuActors = Annotated[
    int, typer.Option("--ray-cpu-actors", min=0, help="Attribute on this many CPU actors instead of GPUs.")
]
RayCpusPerActor = Annotated[
    int, typer.Option("--ray-cpus-per-actor", min=1, help="Cores (torch threads) of each CPU actor.")
]
RayInFlight = Annotated[
    int, typer.Option("--ray-in-flight", min=1, help="Prompts queued on each actor at once.")
]


@dataclass(frozen=True)
class RayOptions:
    """The `--ray*` options of a command (see their help texts)."""

    address: str
    gpu_actors: int = 0
    gpus_per_actor: float = 1.0
    cpu_actors: int = 0
    cpus_per_actor: int = 1
    in_flight: int = 2


def _local_or_name(spec: str | None) -> str | None:
    """A path that exists here, made absolute (workers do not share our working directory); else as given."""
    return str(Path(spec).resolve()) if spec is not None and Path(spec).exists() else spec


def start_pool(
    options: RayOptions, *, model: str, transcoders: str | None, device: str, precision: str, console: Console
) -> WorkerPool:
    """Join the cluster and start the actors with the model loaded (every failure: one ClusterError line)."""
    from circuitbase.engine.ray_pool import ClusterSpec, WorkerPool, connect

    connect(options.address)
    spec = ClusterSpec(
        gpu_actors=options.gpu_actors,
        gpus_per_actor=options.gpus_per_actor,
        cpu_actors=options.cpu_actors,
        cpus_per_actor=options.cpus_per_actor,
        in_flight=options.in_flight,
    )
    pool = WorkerPool.start(
        spec,
        model=_local_or_name(model) or model,
        transcoders=_local_or_name(transcoders),
        device=device,
        precision=precision,
    )
    info = pool.info
    console.print(f"ray: {pool.size} actors loaded {info.model} + {info.transcoder_set} on {info.device}")
    return pool


def attribute_on_cluster(
    options: RayOptions,
    prompts: Sequence[Prompt],
    out: Path,
    *,
    config: AttributionConfig,
    files: GraphFiles,
    summary: RunSummary,
    model: str,
    transcoders: str | None,
    device: str,
    precision: str,
    console: Console,
) -> None:
    """`attribute --ray`: graph files for `prompts` in `out`; the first failed prompt stops the job."""
    from circuitbase.engine.ray_runner import iter_attribute_on_cluster

    with start_pool(
        options, model=model, transcoders=transcoders, device=device, precision=precision, console=console
    ) as pool:
        stream = iter_attribute_on_cluster(pool, prompts, out, config=config, files=files, summary=summary)
        for _prompt, result in stream:
            if isinstance(result, BaseException):
                raise result
        console.print(f"ray: {pool.stats.line()}")


def ingest_on_cluster(
    options: RayOptions,
    prompt_set: PromptSet,
    graphs_out: Path,
    *,
    settings: Neo4jSettings,
    config: IngestConfig,
    attribution: AttributionConfig,
    files: GraphFiles,
    model: str,
    transcoders: str | None,
    device: str,
    precision: str,
    progress: bool,
    console: Console,
) -> IngestSummary:
    """`ingest PROMPTS --ray`: the actors start (and load the model) before anything is written."""
    from circuitbase.ingest.ray_ingest import ingest_prompts_on_cluster
    from circuitbase.ingest.schema import apply_schema
    from circuitbase.settings import open_driver

    with (
        start_pool(
            options, model=model, transcoders=transcoders, device=device, precision=precision, console=console
        ) as pool,
        open_driver(settings) as driver,
    ):
        apply_schema(driver, database=settings.database)
        summary = ingest_prompts_on_cluster(
            driver,
            pool,
            prompt_set.prompts,
            graphs_out,
            attribution=attribution,
            config=config,
            files=files,
            show_progress=progress,
            rejected=prompt_set.rejected,
        )
        console.print(f"ray: {pool.stats.line()}")
    return summary
