"""Attribution and loading as one pipelined job: the engine never waits on Neo4j unless the queue is full.

1. Prompts whose graph is already complete in the database are skipped before any compute.
2. A producer thread attributes the remaining prompts one by one (`runner.iter_attribute`, which also
   skips prompts whose graph file exists) and puts each written graph file on a bounded queue; a
   prompt that fails is put on the queue as an error.
3. The calling thread takes files off the queue and loads them (`loader.GraphLoader`, `config.writers`
   at a time), so attribution of graph i+1 overlaps the database write of graph i. On a fatal error it
   tells the producer to stop.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import neo4j

from circuitbase.engine.attribution import AttributionConfig
from circuitbase.engine.models import LoadedModel
from circuitbase.engine.prompts import Prompt
from circuitbase.engine.runner import GRAPH_FILE_ONLY, GraphFiles, iter_attribute
from circuitbase.engine.transcoders import TranscoderSet
from circuitbase.ingest.loader import GraphLoader, IngestConfig, IngestSummary, run_job
from circuitbase.ingest.model import graph_id
from circuitbase.ingest.writer import complete_graph_ids


@dataclass(frozen=True)
class _Item:
    path: Path | None = None  # a written graph file
    error: BaseException | None = None  # the prompt's failure
    where: str = ""


_DONE = _Item()


def _put(items: queue.Queue[_Item], item: _Item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            items.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


def _produce(
    items: queue.Queue[_Item],
    stop: threading.Event,
    *,
    loaded: LoadedModel,
    transcoders: TranscoderSet,
    prompts: Sequence[Prompt],
    out_dir: Path,
    attribution: AttributionConfig,
    files: GraphFiles,
) -> None:
    for prompt in prompts:
        if stop.is_set():
            return
        try:
            for _, path in iter_attribute(
                loaded, transcoders, [prompt], out_dir, config=attribution, files=files, show_progress=False
            ):
                item = _Item(path=path)
        except Exception as exc:  # forwarded to the consumer, which decides (skip-bad or stop)
            item = _Item(error=exc, where=f"prompt {prompt.id} ({prompt.text[:40]!r})")
        _put(items, item, stop)
    _put(items, _DONE, stop)


def prompts_to_do(
    driver: neo4j.Driver, prompts: Sequence[Prompt], *, transcoder_set: str, database: str = "neo4j"
) -> list[Prompt]:
    """The prompts whose graph under `transcoder_set` is not complete in the database (default "neo4j")."""
    done = complete_graph_ids(driver, database=database)
    return [p for p in prompts if graph_id(transcoder_set, p.id) not in done]


def ingest_prompts(
    driver: neo4j.Driver,
    loaded: LoadedModel,
    transcoders: TranscoderSet,
    prompts: Sequence[Prompt],
    out_dir: str | Path,
    *,
    attribution: AttributionConfig | None = None,
    config: IngestConfig | None = None,
    files: GraphFiles = GRAPH_FILE_ONLY,
    queue_size: int = 8,
    show_progress: bool = True,
    rejected: Sequence[str] = (),
) -> IngestSummary:
    """Attribute `prompts` into `out_dir` and load each graph as it is written (see the module docstring).

    attribution: engine settings (default AttributionConfig()). config: job settings; its model and
    transcoder set default to `loaded.name` and `transcoders.name`. files: what is written per graph
    (default: the graph file alone). queue_size: graph files computed
    ahead of the writer (default 8). rejected: bad prompt lines already skipped by the reader
    (recorded on the job as bad items; needs `config.skip_bad`).
    """
    attribution = attribution or AttributionConfig()
    base = config or IngestConfig()
    config = dataclasses.replace(
        base, model=base.model or loaded.name, transcoder_set=base.transcoder_set or transcoders.name
    )
    out_dir = Path(out_dir)
    todo = prompts_to_do(driver, prompts, transcoder_set=transcoders.name, database=config.database)

    def body(loader: GraphLoader) -> None:
        for line in rejected:
            loader.bad(line)
        loader.skipped(len(prompts) - len(todo))
        items: queue.Queue[_Item] = queue.Queue(maxsize=max(1, queue_size))
        stop = threading.Event()
        producer = threading.Thread(
            target=_produce,
            name="attribution",
            kwargs={
                "items": items,
                "stop": stop,
                "loaded": loaded,
                "transcoders": transcoders,
                "prompts": todo,
                "out_dir": out_dir,
                "attribution": attribution,
                "files": files,
            },
            daemon=True,
        )
        producer.start()

        def written() -> Iterator[Path]:
            while (item := items.get()) is not _DONE:
                if item.path is not None:
                    yield item.path
                elif item.error is not None:
                    loader.bad(f"{item.where}: {item.error}", item.error)

        try:
            loader.load_all(written())
        finally:
            stop.set()
            producer.join()

    parameters = {
        "mode": "prompts",
        "prompts": len(prompts),
        "model": loaded.name,
        "transcoders": transcoders.name,
        "graphs_out": str(out_dir),
        "attribution": asdict(attribution),
    }
    return run_job(
        driver,
        parameters,
        config=config,
        show_progress=show_progress,
        total=len(prompts) + len(rejected),
        body=body,
    )
