"""Analysis speed and GDS memory: seconds per analysis step and `.estimate` figures as the graph count grows.

Data: synthetic pruned graphs with two planted circuits (circuitbase.analysis.synthetic) sized like pruned
graphs of a small model: 12 layers, 16 prompt tokens, 10 logits, 150 noise features per graph drawn from
3,000 per layer (36,000 features; index = 3000 * u**3, so a few features are common and most are rare, as
in real transcoders), 4,000 random edges tried, kept when they go from a lower to a higher layer: about
190 nodes and 1,740 edges per graph. They are loaded with the ingest writer (one transaction per
graph), in stages: after each stage (e.g. 250, 500, 1000 graphs) every step runs once and is timed, and the
memory GDS estimates for each algorithm on the step's real projection is read with `.estimate`, next to
the projection's measured size (`gds.graph.list`).

The benchmark WIPES the database it connects to (settings as for every command: CIRCUITBASE_NEO4J_URI, or
the local instance named by --instance), so it only runs with --wipe.

    python bench/analysis.py --wipe --stages 250 500 1000
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import neo4j
from rich.console import Console
from rich.table import Table

from circuitbase.analysis.gds import aggregated_projection, open_gds, projection
from circuitbase.analysis.run import STEPS, AnalysisConfig, run_step
from circuitbase.analysis.similarity import PROJECTION
from circuitbase.analysis.synthetic import SyntheticConfig, synthetic_graph
from circuitbase.ingest.schema import apply_schema, wipe_database
from circuitbase.ingest.writer import write_graph
from circuitbase.settings import load_neo4j_settings, open_driver

REALISTIC = SyntheticConfig(
    n_graphs=0,
    n_layers=12,
    n_positions=16,
    n_logits=10,
    vocab=5000,
    feature_pool=3000,
    feature_skew=3.0,
    noise_features=150,
    noise_edges=4000,
    seed=7,
)
MIB = 1024 * 1024


def _mib(value: int) -> str:
    return f"{value / MIB:,.1f}"


def estimates(driver: neo4j.Driver, database: str) -> dict[str, str]:
    """Estimated memory (MiB, max) of each algorithm on its real projection, and the projections' sizes."""
    gds = open_gds(driver, database=database)
    out: dict[str, str] = {}
    with aggregated_projection(gds, "bench-undirected", min_graphs=2, undirected=True) as g:
        out["aggregated graph"] = _mib(g.size_in_bytes())
        out["leiden"] = _mib(gds.leiden.estimate(g, relationship_weight_property="weight").bytes_max)
        out["louvain"] = _mib(gds.louvain.estimate(g, relationship_weight_property="weight").bytes_max)
    with aggregated_projection(gds, "bench-directed", min_graphs=2, undirected=False) as g:
        out["pagerank"] = _mib(gds.page_rank.estimate(g, relationship_weight_property="weight").bytes_max)
        out["betweenness"] = _mib(gds.betweenness.estimate(g).bytes_max)
    with projection(gds, "bench-similarity", PROJECTION) as g:
        out["graph-feature graph"] = _mib(g.size_in_bytes())
        out["node similarity"] = _mib(gds.node_similarity.estimate(g, top_k=10).bytes_max)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[250, 500, 1000], help="graph counts")
    parser.add_argument("--instance", default="default", help="local instance when no URI is set")
    parser.add_argument("--wipe", action="store_true", help="required: the benchmark empties the database")
    args = parser.parse_args()
    if not args.wipe:
        parser.error("the benchmark deletes everything in the database; pass --wipe to confirm")
    settings = load_neo4j_settings(instance=args.instance)
    console = Console(width=200)
    rows: list[dict[str, Any]] = []
    with open_driver(settings) as driver:
        wipe_database(driver, database=settings.database)
        apply_schema(driver, database=settings.database)
        loaded, edges = 0, 0
        for stage in sorted(args.stages):
            started = time.perf_counter()
            for i in range(loaded, stage):
                graph = synthetic_graph(i, config=REALISTIC)
                edges += graph.n_edges
                write_graph(driver, graph, database=settings.database)
            load_s = time.perf_counter() - started
            row: dict[str, Any] = {
                "graphs": stage,
                "edges": edges,
                "load ms/graph": load_s / (stage - loaded) * 1000,
            }
            loaded = stage
            for step in STEPS:
                started = time.perf_counter()
                run_step(driver, step, config=AnalysisConfig(), database=settings.database)
                row[f"{step} s"] = time.perf_counter() - started
            row.update(estimates(driver, settings.database))
            rows.append(row)
            console.print(row)
    table = Table(title="analysis steps (seconds) and GDS memory (MiB, estimate max / projection size)")
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            *(
                f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else v
                for v in row.values()
            )
        )
    console.print(table)


if __name__ == "__main__":
    main()
