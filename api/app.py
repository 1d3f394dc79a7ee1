"""The FastAPI application: GraphQL (with GraphiQL) at /graphql, the dashboard at / (static files under
/static), /healthz, /readyz, CORS.

`create_app(config=..., driver=...)` builds it; without a driver it opens one from the Neo4j settings at
startup and closes it at shutdown. Every request gets a fresh context: its caller (from the API key, if
one is presented) and its own DataLoaders.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import neo4j
import strawberry
from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from graphql import DocumentNode, GraphQLError, specified_rules
from strawberry.extensions import QueryDepthLimiter
from strawberry.fastapi import GraphQLRouter
from strawberry.types import ExecutionContext

from circuitbase.api.auth import READ_ACCESS, Caller, access_errors, presented_key, verify_key
from circuitbase.api.cache import ResultCache
from circuitbase.api.errors import ErrorCodes
from circuitbase.api.interventions import InterventionService, ModelSource, default_sources
from circuitbase.api.jobs import IngestSettings, JobRunner
from circuitbase.api.limits import Limits, complexity_errors
from circuitbase.api.repository import Repository, TimedDriver
from circuitbase.api.schema import Context, Mutation, Query
from circuitbase.api.validation import cached_preparation

READ_ACCESS_ENV = "CIRCUITBASE_API_READ_ACCESS"
CORS_ENV = "CIRCUITBASE_API_CORS_ORIGINS"
STATIC_DIR = Path(__file__).parent / "static"


class ApiConfigError(ValueError):
    """A bad API setting (read access mode)."""


@dataclass(frozen=True)
class ApiConfig:
    """read_access: 'open' (default: anyone may query) or 'key' (queries need an API key too; mutations
    always do). cors_origins: allowed browser origins (default none). limits: see `Limits`.
    ingest: the model and transcoders ingest jobs use (default None: no ingest jobs). database: Neo4j
    database (default 'neo4j'). intervention_models: models the `intervene` query may run besides the
    ingest model and the shipped toy model (default none; `circuitbase.api.interventions`).
    intervention_device: where they run ('auto', 'cpu' or 'cuda'; default 'auto')."""

    read_access: str = "open"
    cors_origins: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    ingest: IngestSettings | None = None
    database: str = "neo4j"
    intervention_models: tuple[ModelSource, ...] = ()
    intervention_device: str = "auto"

    def __post_init__(self) -> None:
        if self.read_access not in READ_ACCESS:
            raise ApiConfigError(f"read access must be one of {READ_ACCESS}, got {self.read_access!r}")

    @classmethod
    def from_env(cls, **overrides: object) -> ApiConfig:
        """Settings from CIRCUITBASE_API_READ_ACCESS and CIRCUITBASE_API_CORS_ORIGINS (comma separated),
        then `overrides` (None values ignored)."""
        values: dict[str, object] = {}
        if os.environ.get(READ_ACCESS_ENV):
            values["read_access"] = os.environ[READ_ACCESS_ENV]
        if os.environ.get(CORS_ENV):
            values["cors_origins"] = tuple(o.strip() for o in os.environ[CORS_ENV].split(",") if o.strip())
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def build_schema(config: ApiConfig) -> strawberry.Schema:
    """The schema with its validation (the spec's rules and the depth limit, cached per query text; the
    complexity and access checks, per request: `cached_preparation`) and the error-code extension."""
    limits = config.limits

    def complexity(context: ExecutionContext, document: DocumentNode) -> list[GraphQLError]:
        return complexity_errors(
            document, max_complexity=limits.max_complexity, variables=context.variables or {}
        )

    def access(context: ExecutionContext, document: DocumentNode) -> list[GraphQLError]:
        caller = getattr(context.context, "caller", None) or Caller()
        return access_errors(document, caller=caller, read_access=config.read_access)

    depth = QueryDepthLimiter(max_depth=limits.max_depth).validation_rules  # made once: cacheable
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        extensions=[
            cached_preparation(rules=(*specified_rules, *depth), checks=(complexity, access)),
            ErrorCodes,
        ],
    )


def create_app(*, config: ApiConfig | None = None, driver: neo4j.Driver | None = None) -> FastAPI:
    """The API application (module docstring); `driver` is used as given and not closed."""
    config = config or ApiConfig()
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        from circuitbase.settings import open_driver

        raw = driver or await to_thread.run_sync(open_driver)
        timed = TimedDriver(raw, timeout_s=config.limits.query_timeout_s)
        state["repo"] = Repository(timed, database=config.database)
        state["jobs"] = JobRunner(raw, database=config.database, ingest=config.ingest)
        state["cache"] = ResultCache()
        ingest = config.ingest
        state["interventions"] = InterventionService(
            sources=default_sources(
                given=config.intervention_models,
                ingest=ModelSource(ingest.model, str(ingest.transcoders)) if ingest else None,
            ),
            device=config.intervention_device,
            limits=config.limits,
        )
        try:
            yield
        finally:
            state["jobs"].shutdown()  # type: ignore[attr-defined]
            if driver is None:
                raw.close()

    async def context(request: Request) -> Context:
        repo: Repository = state["repo"]  # type: ignore[assignment]
        key = presented_key(request.headers)
        caller = (
            Caller()  # no key: nothing to look up
            if key is None
            else await to_thread.run_sync(lambda: verify_key(repo.driver, key, database=repo.database))
        )
        return Context(
            repo=repo,
            caller=caller,
            limits=config.limits,
            jobs=state["jobs"],  # type: ignore[arg-type]
            cache=state["cache"],  # type: ignore[arg-type]
            interventions=state["interventions"],  # type: ignore[arg-type]
        )

    app = FastAPI(
        title="circuitbase",
        description="Attribution graphs in Neo4j: the GraphQL API is at /graphql (GraphiQL in a browser).",
        lifespan=lifespan,
    )
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
        )
    router = GraphQLRouter(build_schema(config), context_getter=context, graphql_ide="graphiql")
    app.include_router(router, prefix="/graphql")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz", summary="The process answers.")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Neo4j answers a query.",
        responses={503: {"description": "Neo4j does not answer."}},
    )
    def readyz() -> JSONResponse:
        repo: Repository = state["repo"]  # type: ignore[assignment]
        try:
            repo.ping()
        except (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError) as exc:
            return JSONResponse({"status": "unavailable", "reason": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ready"})

    return app
