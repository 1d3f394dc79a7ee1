"""Attribution on a Ray cluster and loading as one resumable job: `pipeline.ingest_prompts` past one machine.

1. Prompts whose graph is complete in the database are skipped before anything is scheduled
   (`pipeline.prompts_to_do`).
2. The rest stream through the actors of an `engine.ray_pool.WorkerPool` (`ray_runner`: a graph file
   already in `out_dir` is reused; each new graph is saved there as it comes back).
3. Each file is loaded by the existing `loader.GraphLoader` (`config.writers` at a time, one transaction
   per graph, complete graphs skipped), so the database ends up as a single-process run leaves it. The
   progress line adds the per-actor counts; a prompt that failed is a bad item, as in the pipeline.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import neo4j

from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.labels import LABELS_FILE
from circuitbase.engine.prompts import Prompt
from circuitbase.engine.ray_pool import WorkerPool
from circuitbase.engine.ray_runner import iter_attribute_on_cluster
from circuitbase.engine.runner import GRAPH_FILE_ONLY, GraphFiles
from circuitbase.ingest.loader import GraphLoader, IngestConfig, IngestSummary, run_job
from circuitbase.ingest.pipeline import prompts_to_do


def ingest_prompts_on_cluster(
    driver: neo4j.Driver,
    pool: WorkerPool,
    prompts: Sequence[Prompt],
    out_dir: str | Path,
    *,
    attribution: AttributionConfig | None = None,
    config: IngestConfig | None = None,
    files: GraphFiles = GRAPH_FILE_ONLY,
    show_progress: bool = True,
    rejected: Sequence[str] = (),
) -> IngestSummary:
    """Attribute `prompts` on `pool` into `out_dir` and load each graph as it arrives (module docstring).

    attribution: engine settings (default AttributionConfig()). config: job settings; its model and
    transcoder set default to the workers' names, its labels to the labels of the workers' set. files: what
    is written per graph (default: the graph file alone). rejected:
    bad prompt lines already skipped by the reader (recorded on the job as bad items; needs skip_bad).
    """
    attribution = attribution or AttributionConfig()
    info = pool.info
    base = config or IngestConfig()
    out_dir = Path(out_dir)
    todo = prompts_to_do(driver, prompts, transcoder_set=info.transcoder_set, database=base.database)

    def body(loader: GraphLoader) -> None:
        for line in rejected:
            loader.bad(line)
        loader.skipped(len(prompts) - len(todo))

        def written() -> Iterator[Path]:
            stream = iter_attribute_on_cluster(
                pool, todo, out_dir, config=attribution, files=files, show_progress=False
            )
            for prompt, result in stream:
                loader.status = pool.stats.line()
                if isinstance(result, Path):
                    yield result
                else:
                    loader.bad(f"prompt {prompt.id} ({prompt.text[:40]!r}): {result}", result)

        loader.load_all(written())

    parameters = {
        "mode": "prompts",
        "prompts": len(prompts),
        "model": info.model,
        "transcoders": info.transcoder_set,
        "graphs_out": str(out_dir),
        "attribution": asdict(attribution),
        "ray_actors": pool.size,
    }
    with tempfile.TemporaryDirectory(prefix="circuitbase-labels-") as labels_dir:
        labels = base.labels
        if labels is None and info.labels is not None:  # the workers' set may live on their disks only
            labels = Path(labels_dir) / LABELS_FILE
            labels.write_text(info.labels, encoding="utf-8")
        config = dataclasses.replace(
            base,
            model=base.model or info.model,
            transcoder_set=base.transcoder_set or info.transcoder_set,
            labels=labels,
        )
        return run_job(
            driver,
            parameters,
            config=config,
            show_progress=show_progress,
            total=len(prompts) + len(rejected),
            body=body,
        )
