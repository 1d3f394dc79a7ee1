"""Neo4j connection settings for every part of circuitbase, and the one place that opens a driver.

Order: env CIRCUITBASE_NEO4J_URI (+ CIRCUITBASE_NEO4J_USER, default `neo4j`, and CIRCUITBASE_NEO4J_PASSWORD);
else the local server instance started by `circuitbase neo4j start` (its stored ports and password file).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import neo4j

from circuitbase.dbserver.config import Layout
from circuitbase.dbserver.errors import DbServerError

URI_ENV = "CIRCUITBASE_NEO4J_URI"
USER_ENV = "CIRCUITBASE_NEO4J_USER"
PASSWORD_ENV = "CIRCUITBASE_NEO4J_PASSWORD"


class SettingsError(DbServerError):
    """No usable Neo4j connection settings could be found."""


@dataclass(frozen=True)
class Neo4jSettings:
    """Where and as whom to connect; `database` is the Neo4j database name."""

    uri: str
    user: str = "neo4j"
    password: str = ""
    database: str = "neo4j"

    def __repr__(self) -> str:
        return (
            f"Neo4jSettings(uri={self.uri!r}, user={self.user!r}, password='***', database={self.database!r})"
        )


def local_instance_settings(*, name: str = "default", cache_dir: Path | None = None) -> Neo4jSettings:
    """Settings for the local instance `name` under `cache_dir` (default root: see `Layout.resolve`)."""
    layout = Layout.resolve(cache_dir)
    config = layout.load_instance(name)
    password = layout.read_password(name)
    if config is None or password is None:
        raise SettingsError(
            f"no Neo4j configured: set {URI_ENV} (and {PASSWORD_ENV}) or run `circuitbase neo4j start`"
            + ("" if name == "default" else f" --instance {name}")
        )
    return Neo4jSettings(uri=f"bolt://127.0.0.1:{config.bolt_port}", user="neo4j", password=password)


def load_neo4j_settings(*, instance: str = "default", cache_dir: Path | None = None) -> Neo4jSettings:
    """Settings from the environment if CIRCUITBASE_NEO4J_URI is set, else from the local instance."""
    uri = os.environ.get(URI_ENV)
    if uri:
        password = os.environ.get(PASSWORD_ENV)
        if password is None:
            raise SettingsError(f"{URI_ENV} is set but {PASSWORD_ENV} is not")
        return Neo4jSettings(uri=uri, user=os.environ.get(USER_ENV, "neo4j"), password=password)
    return local_instance_settings(name=instance, cache_dir=cache_dir)


def open_driver(settings: Neo4jSettings | None = None) -> neo4j.Driver:
    """A connected driver for `settings` (default: `load_neo4j_settings()`); the caller closes it."""
    settings = settings or load_neo4j_settings()
    driver = neo4j.GraphDatabase.driver(settings.uri, auth=(settings.user, settings.password))
    try:
        driver.verify_connectivity()
    except (neo4j.exceptions.ServiceUnavailable, neo4j.exceptions.AuthError) as exc:
        driver.close()
        reason = " ".join((getattr(exc, "message", None) or str(exc)).split())  # the driver wraps lines
        raise SettingsError(
            f"cannot connect to Neo4j at {settings.uri} as {settings.user}: {reason}"
        ) from exc
    return driver
