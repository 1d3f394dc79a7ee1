"""Install Neo4j Community + Open GDS + Browser jars from Maven Central into a versioned dir, all or nothing.

1. Take a per-version file lock; if `<root>/dist/<key>` exists and its marker verifies, do nothing.
2. Otherwise fill a fresh temp dir next to it: render the pom, run `mvn --strict-checksums package`,
   which copies the runtime closure of org.neo4j:neo4j + neo4j-browser to lib/, the org.neo4j.gds jars
   to plugins/.
3. Write the marker (versions + sha256 of every jar), verify it, then rename the temp dir into place
   (a broken previous install is moved aside and deleted first).
"""

import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from circuitbase.dbserver.config import Layout, Neo4jVersions
from circuitbase.dbserver.errors import DbServerError

MARKER_FILE = "circuitbase-install.json"
JAR_DIRS = ("lib", "plugins")
DEFAULT_VERSIONS = Neo4jVersions()


@dataclass(frozen=True)
class Installation:
    """A verified install: its directory, versions, jar count and size in bytes."""

    path: Path
    versions: Neo4jVersions
    jar_count: int
    size_bytes: int

    @property
    def lib_dir(self) -> Path:
        return self.path / "lib"

    @property
    def plugins_dir(self) -> Path:
        return self.path / "plugins"


@dataclass(frozen=True)
class InstallResult:
    """What `install` did: the installation, whether it assembled anything, and how long it took."""

    installation: Installation
    assembled: bool
    seconds: float


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _jars(path: Path) -> list[Path]:
    return sorted(jar for sub in JAR_DIRS for jar in (path / sub).glob("*.jar"))


def verify_installation(path: Path, *, versions: Neo4jVersions) -> Installation:
    """Check the install at `path` against its marker; DbServerError names the first fault."""
    marker = path / MARKER_FILE
    if not marker.is_file():
        raise DbServerError(f"install at {path} is incomplete: {MARKER_FILE} is missing")
    try:
        recorded = json.loads(marker.read_text())
        recorded_versions = Neo4jVersions(**recorded["versions"])
        files: dict[str, str] = recorded["files"]
    except (ValueError, TypeError, KeyError) as exc:
        raise DbServerError(f"install at {path} has an unreadable {MARKER_FILE} ({exc})") from exc
    if recorded_versions != versions:
        raise DbServerError(f"install at {path} holds {recorded_versions}, expected {versions}")
    on_disk = {jar.relative_to(path).as_posix() for jar in _jars(path)}
    if on_disk != set(files):
        missing, extra = sorted(set(files) - on_disk), sorted(on_disk - set(files))
        raise DbServerError(
            f"install at {path} does not match its marker: missing {missing[:3]}, extra {extra[:3]}"
        )
    for relative, expected in files.items():
        if _sha256(path / relative) != expected:
            raise DbServerError(f"install at {path} is corrupt: {relative} fails its sha256 check")
    size = sum((path / relative).stat().st_size for relative in files)
    return Installation(path=path, versions=versions, jar_count=len(files), size_bytes=size)


def find_maven() -> Path:
    """`mvn` on PATH, or DbServerError."""
    found = shutil.which("mvn")
    if found is None:
        raise DbServerError("Maven (`mvn`) is not on PATH: install Apache Maven 3.8+ to provision Neo4j")
    return Path(found)


def render_pom(versions: Neo4jVersions) -> str:
    """The pom that resolves this version pair (package data `pom.xml.template` with its tokens filled)."""
    template = resources.files("circuitbase.dbserver").joinpath("pom.xml.template").read_text()
    return (
        template.replace("@NEO4J_VERSION@", versions.neo4j)
        .replace("@GDS_VERSION@", versions.gds)
        .replace("@BROWSER_VERSION@", versions.browser)
    )


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _assemble(work: Path, *, versions: Neo4jVersions, maven_repo: Path) -> None:
    (work / "pom.xml").write_text(render_pom(versions))
    command = [
        str(find_maven()),
        "--batch-mode",
        "--quiet",
        "--strict-checksums",
        f"-Dmaven.repo.local={maven_repo}",
        "package",
    ]
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        errors = [line for line in lines if "ERROR" in line] or lines
        raise DbServerError(f"Maven could not resolve {versions}: {errors[0][:500]}")
    shutil.rmtree(work / "target", ignore_errors=True)
    files = {jar.relative_to(work).as_posix(): _sha256(jar) for jar in _jars(work)}
    if not any(name.startswith("plugins/opengds-extension-") for name in files):
        raise DbServerError(f"Maven resolved no org.neo4j.gds:opengds-extension for {versions}")
    marker = {"versions": asdict(versions), "files": files}
    (work / MARKER_FILE).write_text(json.dumps(marker, indent=1, sort_keys=True))


def install(
    *,
    layout: Layout,
    versions: Neo4jVersions = DEFAULT_VERSIONS,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> InstallResult:
    """Make sure `layout.install_dir(versions)` holds a verified install (`force=True` rebuilds it anyway).

    A missing or corrupt install is reported through `log` and rebuilt. Maven resolves through
    `layout.maven_repo`, so a second install of other versions reuses the shared jars.
    """
    began = time.monotonic()
    target = layout.install_dir(versions)
    with _locked(target.parent / f".{versions.key}.lock"):
        if target.exists() and not force:
            try:
                installation = verify_installation(target, versions=versions)
                return InstallResult(installation, assembled=False, seconds=time.monotonic() - began)
            except DbServerError as exc:
                log(f"{exc}; reinstalling")
        log(f"resolving {versions} through Maven into {target} ...")
        work = Path(tempfile.mkdtemp(prefix=f".{versions.key}.tmp-", dir=target.parent))
        try:
            _assemble(work, versions=versions, maven_repo=layout.maven_repo)
            installation = verify_installation(work, versions=versions)
            if target.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{versions.key}.old-", dir=target.parent))
                target.rename(trash / "old")
                shutil.rmtree(trash)
            work.chmod(0o755)
            work.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    moved = Installation(target, versions, installation.jar_count, installation.size_bytes)
    return InstallResult(moved, assembled=True, seconds=time.monotonic() - began)
