"""Background jobs started by mutations: ingest a prompt list, or run the analysis steps.

1. `JobRunner` runs one job at a time on a worker thread (attribution and GDS use every core anyway) and
   keeps each job's state (queued, running, finished, failed) in memory for the polling query.
2. An ingest job runs `circuitbase.ingest.pipeline.ingest_prompts` with the server's configured model and
   transcoder set (loaded once, on the first job), writing graph files under `<graphs_out>/<job id>`; that
   folder, recorded in the `:IngestJob`'s parameters, ties the API job to its database record, whose
   counters give the progress while it runs.
3. An analysis job runs `circuitbase.analysis.run.run_analysis` for the asked steps.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import neo4j

log = logging.getLogger("circuitbase.api")


@dataclass(frozen=True)
class IngestSettings:
    """What ingest jobs attribute with: `model` and `transcoders` (any spec `engine.loading` accepts: names,
    folders, Hub repo ids, hf:// URIs), `graphs_out` (where graph files go), `device` ('auto', 'cpu' or
    'cuda'; default 'auto')."""

    model: str
    transcoders: str
    graphs_out: Path
    device: str = "auto"


@dataclass
class JobState:
    """One API job; `marker` finds its `:IngestJob`, `summary` is what the job returned."""

    id: str
    kind: str  # "ingest" or "analysis"
    total: int
    status: str = "queued"
    error: str | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    started: str | None = None
    finished: str | None = None
    marker: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


class JobError(ValueError):
    """A job that cannot be started (e.g. no model configured for ingest)."""


class JobRunner:
    """Runs jobs one at a time in the background (module docstring)."""

    def __init__(self, driver: neo4j.Driver, *, database: str, ingest: IngestSettings | None) -> None:
        self.driver, self.database, self.ingest = driver, database, ingest
        self.jobs: dict[str, JobState] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="circuitbase-job")
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None

    def get(self, job_id: str) -> JobState | None:
        return self.jobs.get(job_id)

    def list(self) -> list[JobState]:
        return sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)

    def start_ingest(self, prompts: Sequence[Any], *, max_feature_nodes: int | None) -> JobState:
        """Queue attribution + loading of `prompts` (engine `Prompt`s); JobError without a model."""
        if self.ingest is None:
            raise JobError(
                "this server has no model for ingest jobs: start it with --model and --transcoders"
            )
        settings = self.ingest
        job = self._new("ingest", total=len(prompts))
        out_dir = settings.graphs_out / job.id
        job.marker = str(out_dir.resolve())

        def work() -> dict[str, Any]:
            from circuitbase.engine.attribution import AttributionConfig
            from circuitbase.ingest.loader import IngestConfig
            from circuitbase.ingest.pipeline import ingest_prompts
            from circuitbase.ingest.schema import apply_schema

            loaded, transcoders = self._model()
            apply_schema(self.driver, database=self.database)
            summary = ingest_prompts(
                self.driver,
                loaded,
                transcoders,
                prompts,
                out_dir,
                attribution=AttributionConfig(max_feature_nodes=max_feature_nodes),
                config=IngestConfig(skip_bad=True, database=self.database),
                show_progress=False,
            )
            return {
                "ingest_job": summary.job_id,
                "loaded": summary.loaded,
                "skipped": summary.skipped,
                "bad": summary.bad,
                "status": summary.status,
            }

        return self._submit(job, work)

    def start_analysis(self, steps: Sequence[str]) -> JobState:
        """Queue the analysis `steps` (in the analysis package's order)."""
        from circuitbase.analysis.run import run_analysis

        job = self._new("analysis", total=len(steps))

        def work() -> dict[str, Any]:
            results = run_analysis(self.driver, steps=steps, database=self.database)
            return {r.step: r.summary for r in results}

        return self._submit(job, work)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _new(self, kind: str, *, total: int) -> JobState:
        job = JobState(id=f"{kind}-{uuid.uuid4().hex[:12]}", kind=kind, total=total)
        self.jobs[job.id] = job
        return job

    def _submit(self, job: JobState, work: Callable[[], dict[str, Any]]) -> JobState:
        def run() -> None:
            job.status, job.started = "running", datetime.now(UTC).isoformat()
            try:
                job.summary = work()
                job.status = "finished"
            except Exception as exc:  # reported on the job; the server goes on
                log.exception("job %s failed", job.id)
                job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            job.finished = datetime.now(UTC).isoformat()

        self._pool.submit(run)
        return job

    def _model(self) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is None:
                from circuitbase.engine.loading import load_model_and_transcoders

                assert self.ingest is not None
                loaded, transcoders, _folder = load_model_and_transcoders(
                    self.ingest.model, self.ingest.transcoders, device=self.ingest.device
                )
                self._loaded = loaded, transcoders
            return self._loaded
