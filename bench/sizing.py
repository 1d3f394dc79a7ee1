"""Sizing for the ingest and analysis benches: store bytes on disk, and measured figures extrapolated.

`empty_database` stops a local instance and deletes its database's store and transaction logs (the next
start makes an empty one); `store_bytes` is the size of the store files (transaction logs excluded), read
with the server stopped, so every page is on disk (Community Edition has no checkpoint procedure).

`sizing_table` takes figures measured at two or more graph counts n (values v) and extrapolates each to 100K
and 1M graphs. Its growth exponent k is the least-squares slope of log v on log n. With k <= 1.15 the figure
is taken as linear in graphs: v = a + b n, the least-squares line over every size (b is the per-graph cost;
never below the value at the largest size, so a figure that fell is held there), which over-estimates a
figure that grows sub-linearly (a bounded dictionary, fixed start-up costs). With k > 1.15 the figure is
flagged super-linear and extrapolated along the least-squares power law v = c n^k. A figure can instead
bring its own values at the targets (`Quantity.at_targets`, e.g. GDS's estimate at extrapolated counts).
"""

from __future__ import annotations

import math
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from circuitbase.dbserver.config import Layout
from circuitbase.dbserver.server import stop

TARGETS = (100_000, 1_000_000)
SUPERLINEAR = 1.15  # growth exponent above which a figure is extrapolated as a power law
UNITS = ("count", "bytes", "seconds")


def empty_database(name: str, *, layout: Layout, database: str = "neo4j") -> Path:
    """Stop local instance `name` and delete `database`'s store and transaction logs; returns the
    instance folder. The instance stays stopped: its next start creates the database empty."""
    root = layout.instance_dir(name)
    stop(name, layout=layout)
    for sub in ("databases", "transactions"):
        shutil.rmtree(root / "data" / sub / database, ignore_errors=True)
    return root


def store_bytes(root: Path, *, database: str = "neo4j") -> int:
    """Bytes of `database`'s store files under instance folder `root` (transaction logs excluded); read
    it with the server stopped."""
    store = root / "data" / "databases" / database
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file())


@dataclass(frozen=True)
class Quantity:
    """One measured figure: `name`, its unit ('count', 'bytes' or 'seconds') and its value at each size;
    `at_targets` (default None: extrapolated) gives its values at the targets, made by `model`; `ceiling`
    (default none) bounds the extrapolation."""

    name: str
    unit: str
    values: Sequence[float]
    at_targets: Sequence[float] | None = None
    model: str = ""
    ceiling: float = math.inf

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit of {self.name!r} must be one of {UNITS}, got {self.unit!r}")

    def extrapolated(self, sizes: Sequence[int], targets: Sequence[int] = TARGETS) -> list[float]:
        """Its values at `targets` (default 100K and 1M graphs): `at_targets`, else its fit's."""
        if self.at_targets is None:
            f = fit(sizes, self.values, ceiling=self.ceiling)
            return [f.at(n) for n in targets]
        if len(self.at_targets) != len(targets):
            raise ValueError(f"{self.name!r} has {len(self.at_targets)} values for {len(targets)} targets")
        return list(self.at_targets)


@dataclass(frozen=True)
class Fit:
    """The least-squares line and power law of one figure over its measured sizes (module docstring)."""

    fixed: float
    per_graph: float
    scale: float
    exponent: float
    last: float
    ceiling: float = math.inf

    @property
    def superlinear(self) -> bool:
        return self.exponent > SUPERLINEAR

    def at(self, graphs: int) -> float:
        """The figure extrapolated to `graphs` graphs (at most `ceiling`)."""
        if self.superlinear:
            value = self.scale * graphs**self.exponent
        else:
            value = max(self.fixed + self.per_graph * graphs, self.last)
        return min(value, self.ceiling)


def fit(sizes: Sequence[int], values: Sequence[float], *, ceiling: float = math.inf) -> Fit:
    """Fit `values` measured at `sizes` graphs (two or more sizes, increasing); `ceiling` (default none)
    bounds the extrapolation, e.g. a count of features that cannot exceed the dictionary. A figure that is
    0 at some size has no power law (exponent NaN, taken as linear)."""
    if len(sizes) < 2 or len(values) != len(sizes) or list(sizes) != sorted(set(sizes)):
        raise ValueError(f"need values at two or more increasing sizes, got sizes {list(sizes)}")
    per_graph, fixed = statistics.linear_regression(sizes, values)
    exponent, log_scale = math.nan, math.nan
    if min(values) > 0:
        exponent, log_scale = statistics.linear_regression(
            [math.log(n) for n in sizes], [math.log(v) for v in values]
        )
    return Fit(
        fixed=fixed,
        per_graph=per_graph,
        scale=math.exp(log_scale),
        exponent=exponent,
        last=values[-1],
        ceiling=ceiling,
    )


def human(value: float, unit: str) -> str:
    """`value` for a reader: counts with K/M/B, bytes in binary units, seconds up to days."""
    if unit == "bytes":
        scales = (("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10))
        return next((f"{value / s:,.1f} {name}" for name, s in scales if abs(value) >= s), f"{value:,.0f} B")
    if unit == "seconds":
        scales = (("d", 86_400.0), ("h", 3_600.0), ("min", 60.0), ("s", 1.0))
        fallback = f"{value * 1e3:.1f} ms"
        return next((f"{value / s:,.1f} {name}" for name, s in scales if abs(value) >= s), fallback)
    scales = (("B", 1e9), ("M", 1e6), ("K", 1e3))
    return next((f"{value / s:,.1f}{name}" for name, s in scales if abs(value) >= s), f"{value:,.1f}")


def sizing_table(
    sizes: Sequence[int], quantities: Sequence[Quantity], *, title: str, targets: Sequence[int] = TARGETS
) -> Table:
    """Each quantity at the measured `sizes`, per graph, its growth exponent and extrapolated to `targets`
    (default 100K and 1M graphs); super-linear ones are marked."""
    out = Table(title=title)
    out.add_column("figure")
    for n in sizes:
        out.add_column(f"@ {n:,}", justify="right")
    out.add_column("per graph", justify="right")
    out.add_column("growth", justify="right")
    for n in targets:
        out.add_column(f"@ {n:,}", justify="right")
    out.add_column("model")
    for quantity in quantities:
        f = fit(sizes, quantity.values, ceiling=quantity.ceiling)
        model = quantity.model or ("power law" if f.superlinear else "linear")
        if quantity.ceiling < math.inf:
            model += f", at most {human(quantity.ceiling, quantity.unit)}"
        out.add_row(
            quantity.name,
            *(human(v, quantity.unit) for v in quantity.values),
            human(f.per_graph, quantity.unit),
            "-" if math.isnan(f.exponent) else f"n^{f.exponent:.2f}",
            *(human(v, quantity.unit) for v in quantity.extrapolated(sizes, targets)),
            f"{model}, SUPER-LINEAR" if f.superlinear else model,
        )
    return out
