"""Per-graph timing shared by both tools' bench runners (importable from either interpreter).

A case's s/graph is the median of its timed graphs, each timed alone (the device synchronised before the
clock stops), so a burst of other work on a shared machine moves one sample and not the figure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch


def synchronize(device: str) -> None:
    """Wait for queued GPU work (no-op on a CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def timed(run: Callable[[Any], Any], item: Any, *, device: str) -> tuple[float, Any]:
    """(seconds, result) of `run(item)`, queued GPU work included."""
    start = time.perf_counter()
    result = run(item)
    synchronize(device)
    return time.perf_counter() - start, result


def median_seconds(run: Callable[[Any], Any], items: Iterable[Any], *, device: str) -> float | None:
    """Median seconds of `run` over `items` (None when there are none)."""
    samples = [timed(run, item, device=device)[0] for item in items]
    return statistics.median(samples) if samples else None
