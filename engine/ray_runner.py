"""`runner.iter_attribute` on a Ray cluster: graph files for many prompts, computed by a `WorkerPool`.

1. Prompts whose graph file already exists in the output directory are yielded at once (re-runs resume).
2. The rest go to the pool's actors; each graph is saved (atomically, `AttributionGraph.save`) on this
   machine as it comes back, with its Neuronpedia JSON when asked, and yielded with its path.
3. A prompt that failed is yielded with its error instead of a path; the caller decides (stop or skip).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.prompts import Prompt
from circuitbase.engine.ray_pool import WorkerPool
from circuitbase.engine.runner import GRAPH_FILE_ONLY, GraphFiles, RunSummary, graph_path, save_graph
from circuitbase.progress import Progress


def iter_attribute_on_cluster(
    pool: WorkerPool,
    prompts: Sequence[Prompt],
    out_dir: str | Path,
    *,
    config: AttributionConfig | None = None,
    files: GraphFiles = GRAPH_FILE_ONLY,
    show_progress: bool = True,
    summary: RunSummary | None = None,
) -> Iterator[tuple[Prompt, Path | BaseException]]:
    """(prompt, graph file or the prompt's error) for every prompt (see the module docstring).

    config: engine settings (default AttributionConfig()). files: what is written per graph (default: the
    graph file alone). show_progress: a progress bar with the per-actor counts (default True). summary:
    filled with counts and time (default: a new one).
    """
    config = config or AttributionConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary if summary is not None else RunSummary()
    start = time.perf_counter()
    todo = []
    with Progress("attribute", total=len(prompts), unit="graphs", enabled=show_progress) as progress:
        for prompt in prompts:
            path = graph_path(out_dir, prompt)
            if path.exists():
                summary.skipped += 1
                progress.skip()
                yield prompt, path
            else:
                todo.append(prompt)
        for prompt, result in pool.attribute(todo, config=config):
            if isinstance(result, BaseException):
                yield prompt, result
                continue
            path = save_graph(
                result, graph_path(out_dir, prompt), prompt=prompt, progress=progress, summary=summary,
                files=files,
            )  # fmt: skip
            summary.seconds = time.perf_counter() - start
            progress.advance(info=pool.stats.line())
            yield prompt, path
