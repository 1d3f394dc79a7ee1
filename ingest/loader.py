"""Load graph files into Neo4j as one recorded job: read, check, write, count, report progress.

1. Find the graph files of a directory: `.safetensors` (circuitbase) and graph `.json` (Neuronpedia /
   circuit-tracer); a `.json` whose `.safetensors` twin is there is the same graph and is left out.
2. For each file: read it into rows, check it against the job's model and transcoder set, write it in
   one transaction (`writer.write_graph`; complete graphs are skipped there). With `writers` > 1 that
   many files are read and written at once, each in its own transaction (`concurrent.run_concurrently`);
   a deadlock between two writers of shared Feature/ATTRIBUTES rows is retried by the driver.
3. A bad file (unreadable, wrong set, non-finite numbers) stops the job with an IngestError naming it,
   or, with `skip_bad`, is recorded on the job and listed in the summary while the job goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import neo4j

from circuitbase.engine.graph import AttributionGraph
from circuitbase.ingest.concurrent import run_concurrently
from circuitbase.ingest.jobs import JobRecord
from circuitbase.ingest.labels import write_feature_labels
from circuitbase.ingest.model import GraphRows, IngestError, rows_from_graph
from circuitbase.ingest.neuronpedia_import import rows_from_neuronpedia
from circuitbase.ingest.writer import WriterConfig, write_graph
from circuitbase.progress import Progress


@dataclass(frozen=True)
class IngestConfig:
    """What a job accepts and how it writes.

    model / transcoder_set: every graph must name this model / set (None, the default: any).
    skip_bad: go on past bad items and list them (default False: the first bad item stops the job).
    database: Neo4j database name (default "neo4j"). writer: batching inside a graph's transaction.
    labels: a feature labels file or transcoder folder whose labels are written onto the Feature nodes
    after the graphs (default None: none). writers: graphs written at once, each in its own
    transaction (default 1: one after another).
    """

    model: str | None = None
    transcoder_set: str | None = None
    skip_bad: bool = False
    database: str = "neo4j"
    writer: WriterConfig = field(default_factory=WriterConfig)
    labels: Path | None = None
    writers: int = 1


@dataclass
class IngestSummary:
    """Counts and timing of one job; `bad` lists the skipped bad items ("where: why")."""

    job_id: str = ""
    status: str = "running"
    loaded: int = 0
    skipped: int = 0
    nodes: int = 0
    relationships: int = 0
    seconds: float = 0.0
    bad: list[str] = field(default_factory=list)
    features_labelled: int = 0

    @property
    def graphs_per_second(self) -> float:
        return self.loaded / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows_per_second(self) -> float:
        return (self.nodes + self.relationships) / self.seconds if self.seconds > 0 else 0.0


def graph_files(directory: str | Path) -> list[Path]:
    """The graph files of `directory` (not recursive), sorted by name; see the module docstring."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IngestError(f"{directory}: no such graph directory")
    binary = sorted(p for p in directory.glob("*.safetensors") if not p.name.startswith("."))
    stems = {p.stem for p in binary}
    documents = sorted(
        p for p in directory.glob("*.json") if not p.name.startswith(".") and p.stem not in stems
    )
    return sorted([*binary, *documents])


def read_graph_rows(path: str | Path) -> GraphRows:
    """Rows of one graph file of either format; every failure is an IngestError naming the file."""
    path = Path(path)
    if path.suffix == ".json":
        return rows_from_neuronpedia(path)
    try:
        graph = AttributionGraph.load(path, unpruned=False)  # ingest reads the pruned graph only
    except ValueError as exc:  # GraphFileError
        raise IngestError(str(exc)) from None
    return rows_from_graph(graph, path=path)


def check_rows(rows: GraphRows, config: IngestConfig, *, where: str) -> None:
    """Raise IngestError if the graph belongs to another model or transcoder set than the job's."""
    if config.transcoder_set is not None and rows.transcoder_set != config.transcoder_set:
        raise IngestError(
            f"{where}: graph uses transcoder set {rows.transcoder_set!r}, "
            f"the job loads {config.transcoder_set!r}"
        )
    if config.model is not None and rows.model != config.model:
        raise IngestError(f"{where}: graph is of model {rows.model!r}, the job loads {config.model!r}")


def progress_bar(*, show: bool, total: int | None) -> Progress:
    """The ingest progress (`circuitbase.progress`): graphs done of `total`, graphs/s, time left; the
    loader adds rows (nodes + relationships)/s."""
    return Progress("ingest", total=total, unit="graphs", enabled=show)


class GraphLoader:
    """Loads graph files into the database under one job, keeping the summary and progress up to date."""

    def __init__(
        self,
        driver: neo4j.Driver,
        job: JobRecord,
        *,
        config: IngestConfig,
        progress: Progress | None = None,
    ) -> None:
        self.driver, self.job, self.config = driver, job, config
        self.summary = IngestSummary(job_id=job.id)
        self.progress = progress
        self.started = time.perf_counter()
        self._lock = threading.Lock()  # the summary and progress, shared by concurrent writers
        self.status = ""  # shown after the rates on the progress line (e.g. a cluster's per-actor counts)

    def load_all(self, paths: Iterable[Path]) -> None:
        """Load every file, `config.writers` at a time; the first error stops the job (see `bad`)."""
        run_concurrently(self.load, paths, workers=self.config.writers)

    def load(self, path: Path) -> None:
        """Read, check and write one file; a bad file is handled by `bad`."""
        try:
            rows = read_graph_rows(path)
            check_rows(rows, self.config, where=str(path))
        except IngestError as exc:
            self.bad(str(exc))
            return
        result = write_graph(
            self.driver, rows, job=self.job.id, database=self.config.database, config=self.config.writer
        )
        with self._lock:
            if result.loaded:
                self.summary.loaded += 1
                self.summary.nodes += result.nodes_created
                self.summary.relationships += result.relationships_created
            else:
                self.summary.skipped += 1
            self.advance()

    def skipped(self, n: int) -> None:
        """Count `n` items found complete before any work (recorded on the job)."""
        self.job.count_skipped(n)
        with self._lock:
            self.summary.skipped += n
            self.summary.seconds = time.perf_counter() - self.started
            if self.progress is not None:
                self.progress.skip(n)

    def bad(self, message: str, exc: BaseException | None = None) -> None:
        """Record a bad item; raise it (as IngestError, or `exc` itself) unless the job skips bad items."""
        self.job.error(message)
        if not self.config.skip_bad:
            if exc is not None and not isinstance(exc, ValueError):
                raise exc
            raise IngestError(message)
        with self._lock:
            self.summary.bad.append(message)
            self.advance()

    def advance(self, n: int = 1) -> None:
        self.summary.seconds = time.perf_counter() - self.started
        if self.progress is not None:
            rates = f"{self.summary.rows_per_second:,.0f} rows/s"
            self.progress.advance(n, info=f"{rates} | {self.status}" if self.status else rates)

    def finish(self) -> IngestSummary:
        self.summary.seconds = time.perf_counter() - self.started
        self.summary.status = "finished_with_errors" if self.summary.bad else "finished"
        self.job.finish(self.summary.status)
        return self.summary


def run_job(
    driver: neo4j.Driver,
    parameters: dict[str, Any],
    *,
    config: IngestConfig,
    show_progress: bool,
    total: int | None,
    body: Callable[[GraphLoader], None],
) -> IngestSummary:
    """Start a job record, run `body(loader)`, finish the record (`failed` / `interrupted` on errors)."""
    job = JobRecord(driver, database=config.database).start(parameters)
    with progress_bar(show=show_progress, total=total) as progress:
        loader = GraphLoader(driver, job, config=config, progress=progress)
        try:
            body(loader)
            if config.labels is not None:
                loader.summary.features_labelled = write_feature_labels(
                    driver, config.labels, database=config.database
                )
        except KeyboardInterrupt:
            job.finish("interrupted")
            raise
        except BaseException:
            job.finish("failed")
            raise
    return loader.finish()


def ingest_files(
    driver: neo4j.Driver,
    paths: Iterable[Path],
    *,
    config: IngestConfig | None = None,
    show_progress: bool = False,
    parameters: dict[str, Any] | None = None,
) -> IngestSummary:
    """Load graph files as one job (`parameters`: recorded on the job, default the file count)."""
    config = config or IngestConfig()
    paths = list(paths)

    def body(loader: GraphLoader) -> None:
        loader.load_all(paths)

    params = {"mode": "files", "files": len(paths), **(parameters or {})}
    return run_job(driver, params, config=config, show_progress=show_progress, total=len(paths), body=body)
