"""Find a Java that Neo4j 5.26 accepts: `$JAVA_HOME/bin/java`, else `java` on PATH, version 17..21."""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from circuitbase.dbserver.errors import DbServerError

MIN_JAVA = 17
MAX_JAVA = 21


@dataclass(frozen=True)
class JavaRuntime:
    """A java executable and its major version."""

    executable: Path
    major: int


def parse_java_major(version_output: str) -> int:
    """Major version from `java -version` output (`"17.0.15"` -> 17, legacy `"1.8.0_392"` -> 8)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        raise DbServerError(f"cannot read a Java version from: {version_output.strip()[:200]!r}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> JavaRuntime:
    """The Java runtime to use, or DbServerError saying what is missing or too old/new."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if not candidate.is_file():
            raise DbServerError(f"JAVA_HOME={java_home} has no bin/java")
    else:
        found = shutil.which("java")
        if found is None:
            raise DbServerError(f"no Java found: install a JDK {MIN_JAVA}-{MAX_JAVA} or set JAVA_HOME")
        candidate = Path(found)
    proc = subprocess.run([str(candidate), "-version"], capture_output=True, text=True, check=False)
    major = parse_java_major(proc.stderr + proc.stdout)
    if not MIN_JAVA <= major <= MAX_JAVA:
        raise DbServerError(
            f"{candidate} is Java {major}; Neo4j 5.26 needs Java {MIN_JAVA}-{MAX_JAVA} (set JAVA_HOME)"
        )
    return JavaRuntime(executable=candidate, major=major)
