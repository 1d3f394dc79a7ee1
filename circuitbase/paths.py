"""Where circuitbase keeps what it downloads and computes: one cache root for every part."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "CIRCUITBASE_HOME"


def cache_home() -> Path:
    """`$CIRCUITBASE_HOME`, else `~/.cache/circuitbase` (venvs, Neo4j, models, corpora, demo data)."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else Path.home() / ".cache" / "circuitbase"
