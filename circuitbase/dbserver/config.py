"""Where the local Neo4j server lives on disk, which versions it runs and how an instance is configured.

Layout under the root (default `~/.cache/circuitbase/neo4j`, or `$CIRCUITBASE_HOME/neo4j`):
`dist/<neo4j>-gds<gds>/` (one install per version pair, shared), `instances/<name>/` (conf, data, logs, pid,
password; one per server), `maven-repo/` (the Maven local repository the installs resolve through).
"""

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from circuitbase.dbserver.errors import DbServerError
from circuitbase.paths import cache_home

INSTANCE_FILE = "instance.json"
PASSWORD_FILE = "password"
_MEMORY_RE = re.compile(r"^[1-9][0-9]*[kmg]$")


@dataclass(frozen=True)
class Neo4jVersions:
    """An exact Neo4j/GDS pair (GDS 2.13.9 is built against Neo4j 5.26.24) plus the Browser jar version."""

    neo4j: str = "5.26.24"
    gds: str = "2.13.9"
    browser: str = "5.24.0"

    def __str__(self) -> str:
        return f"Neo4j {self.neo4j} + GDS {self.gds} (Browser {self.browser})"

    @property
    def key(self) -> str:
        """Directory name of the install for this pair, e.g. `5.26.24-gds2.13.9`."""
        return f"{self.neo4j}-gds{self.gds}"


@dataclass(frozen=True)
class InstanceConfig:
    """One server instance: name, loopback ports, JVM heap and page cache (`<n>k|m|g`), versions it runs."""

    name: str = "default"
    bolt_port: int = 7697
    http_port: int = 7484
    heap: str = "4g"
    pagecache: str = "2g"
    versions: Neo4jVersions = field(default_factory=Neo4jVersions)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise DbServerError(f"instance name {self.name!r} may only use letters, digits, '.', '_' and '-'")
        for label, port in (("bolt", self.bolt_port), ("http", self.http_port)):
            if not 1024 <= port <= 65535:
                raise DbServerError(f"{label} port {port} is outside 1024..65535")
        if self.bolt_port == self.http_port:
            raise DbServerError(f"bolt and http ports must differ (both {self.bolt_port})")
        for label, size in (("heap", self.heap), ("pagecache", self.pagecache)):
            if not _MEMORY_RE.match(size):
                raise DbServerError(f"{label} size {size!r} must look like 512m or 4g")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "InstanceConfig":
        raw = json.loads(text)
        return cls(**{**raw, "versions": Neo4jVersions(**raw["versions"])})


@dataclass(frozen=True)
class Layout:
    """Paths under one root directory."""

    root: Path

    @classmethod
    def resolve(cls, cache_dir: Path | None = None) -> "Layout":
        """`cache_dir` if given, else `$CIRCUITBASE_HOME/neo4j`, else `~/.cache/circuitbase/neo4j`."""
        if cache_dir is not None:
            return cls(cache_dir.expanduser().resolve())
        return cls((cache_home() / "neo4j").resolve())

    @property
    def maven_repo(self) -> Path:
        return self.root / "maven-repo"

    def install_dir(self, versions: Neo4jVersions) -> Path:
        return self.root / "dist" / versions.key

    def instance_dir(self, name: str) -> Path:
        return self.root / "instances" / name

    def load_instance(self, name: str) -> InstanceConfig | None:
        """The stored configuration of instance `name`, or None if it was never started."""
        path = self.instance_dir(name) / INSTANCE_FILE
        if not path.is_file():
            return None
        try:
            return InstanceConfig.from_json(path.read_text())
        except (ValueError, TypeError, KeyError) as exc:
            raise DbServerError(
                f"{path} is unreadable ({exc}); delete it to reset the instance settings"
            ) from exc

    def read_password(self, name: str) -> str | None:
        """The stored password of instance `name`, or None."""
        path = self.instance_dir(name) / PASSWORD_FILE
        return path.read_text().strip() if path.is_file() else None
