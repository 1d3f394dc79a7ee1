"""Analysis at scale: seconds per analysis step and GDS memory on 1K and 10K graphs, and how they grow.

Data: synthetic pruned graphs with two planted circuits (circuitbase.analysis.synthetic) sized like pruned
graphs of a small model: 12 layers, 16 prompt tokens, 10 logits, 150 noise features per graph drawn from
3,000 per layer (36,000 features; index = 3000 * u**3, so a few features are common and most are rare, as
in real transcoders), 4,000 random node pairs tried as edges, kept when they go from a lower to a higher
layer: about 190 nodes and 1,750 edges per graph (seed 7; graph i is always the same graph).

Each stage (default 1,000 and 10,000 graphs) starts from an empty database: the graphs are made one at a
time (in a second process) and loaded with the bulk path (`ingest.bulk.bulk_import_rows`: CSV files,
`neo4j-admin database import full`), which keeps only the shared nodes and the aggregated ATTRIBUTES sums
in memory, never all graphs; the table shows the bench process's peak memory. Then every analysis step
runs once, timed (communities, subcircuits, similarity, hubs as `circuitbase analyze` runs them, then
compare on the correct/incorrect split), and GDS's `.estimate` of each algorithm's memory is read on the
step's real projection, next to the projection's own size. The table gives each figure per stage and the
growth from the first stage to the last.

The benchmark WIPES the database of the local instance it loads (`--instance`, made beforehand with
`circuitbase neo4j start --instance NAME`; the bulk path refuses a remote server), so it only runs with
--wipe.

    python bench/analysis.py --wipe --instance bench-analysis --stages 1000 10000
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import resource
import time

import neo4j
from rich.console import Console
from rich.table import Table

from circuitbase.analysis.compare import Split, compare
from circuitbase.analysis.gds import aggregated_projection, open_gds, projection
from circuitbase.analysis.run import STEPS, AnalysisConfig, run_step
from circuitbase.analysis.similarity import PROJECTION
from circuitbase.analysis.synthetic import SyntheticConfig, synthetic_graph
from circuitbase.ingest.bulk import bulk_import_rows
from circuitbase.ingest.schema import wipe_database
from circuitbase.settings import local_instance_settings, open_driver

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
TIMED = (*STEPS, "compare")


def gds_memory(driver: neo4j.Driver, database: str) -> dict[str, str]:
    """Per step: its projections' size + GDS's estimated maximum for its algorithms, in MiB."""
    gds = open_gds(driver, database=database)
    out: dict[str, str] = {}

    def mib(graph_bytes: int, algorithm_bytes: int) -> str:
        return f"{graph_bytes / MIB:,.1f} + {algorithm_bytes / MIB:,.1f}"

    with aggregated_projection(gds, "bench-undirected", min_graphs=2, undirected=True) as g:
        leiden = gds.leiden.estimate(g, relationship_weight_property="weight").bytes_max
        out["communities"] = mib(g.size_in_bytes(), leiden)
    with aggregated_projection(gds, "bench-directed", min_graphs=2, undirected=False) as g:
        rank = gds.page_rank.estimate(g, relationship_weight_property="weight").bytes_max
        out["hubs"] = mib(g.size_in_bytes(), rank + gds.betweenness.estimate(g).bytes_max)
    with projection(gds, "bench-similarity", PROJECTION) as g:
        out["similarity"] = mib(g.size_in_bytes(), gds.node_similarity.estimate(g, top_k=10).bytes_max)
    return out


def run_stage(instance: str, n_graphs: int, console: Console) -> dict[str, float | str]:
    """Empty the instance's database, bulk-load `n_graphs` graphs, time every step and read GDS memory."""
    settings = local_instance_settings(name=instance)
    with open_driver(settings) as driver:
        started = time.perf_counter()
        wipe_database(driver, database=settings.database)
        console.print(f"{n_graphs:,} graphs: wiped in {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    with multiprocessing.Pool(1) as pool:  # one process makes graphs while this one writes their CSV rows
        make = functools.partial(synthetic_graph, config=REALISTIC)
        graphs = pool.imap(make, range(n_graphs), chunksize=50)
        loaded = bulk_import_rows(graphs, instance=instance, parameters={"bench": "analysis"})
    with open_driver(settings) as driver:  # the schema's indexes are built after the import
        driver.execute_query("CALL db.awaitIndexes(3600)", database_=settings.database)
    row: dict[str, float | str] = {
        "load": time.perf_counter() - started,
        "nodes": loaded.summary.nodes,
        "relationships": loaded.summary.relationships,
        "peak MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    }
    console.print(f"{n_graphs:,} graphs: {row}")
    with open_driver(settings) as driver:
        for step in TIMED:
            started = time.perf_counter()
            if step == "compare":
                compare(driver, Split(split="correct"), database=settings.database)
            else:
                run_step(driver, step, config=AnalysisConfig(), database=settings.database)
            row[step] = time.perf_counter() - started
            console.print(f"{n_graphs:,} graphs: {step} {row[step]:.1f} s")
        row.update({f"{step} GDS": text for step, text in gds_memory(driver, settings.database).items()})
    return row


def table(stages: list[int], rows: list[dict[str, float | str]]) -> Table:
    """Step, seconds per stage, growth first -> last stage, GDS MiB per stage."""
    first, last = rows[0], rows[-1]
    out = Table(
        title=(
            f"analysis steps on {' / '.join(f'{n:,}' for n in stages)} graphs: seconds, growth "
            f"({stages[-1] / stages[0]:.0f}x the graphs), GDS MiB (projection + algorithm estimate max)"
        )
    )
    out.add_column("step")
    for n in stages:
        out.add_column(f"s @ {n:,}", justify="right")
    out.add_column("growth", justify="right")
    for n in stages:
        out.add_column(f"GDS MiB @ {n:,}", justify="right")
    for name in ("nodes", "relationships", "peak MiB"):
        cells = [f"{int(r[name]):,}" for r in rows]
        out.add_row(name, *cells, f"{float(last[name]) / float(first[name]):.1f}x", *("" for _ in rows))
    for step in ("load", *TIMED):
        seconds = [f"{float(r[step]):,.1f}" for r in rows]
        growth = f"{float(last[step]) / max(float(first[step]), 1e-3):.1f}x"
        out.add_row(step, *seconds, growth, *(str(r.get(f"{step} GDS", "-")) for r in rows))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[1000, 10_000], help="graph counts")
    parser.add_argument(
        "--instance", default="bench-analysis", help="local instance loaded (made beforehand)"
    )
    parser.add_argument("--wipe", action="store_true", help="required: the benchmark empties the database")
    args = parser.parse_args()
    if not args.wipe:
        parser.error("the benchmark deletes everything in the database; pass --wipe to confirm")
    console = Console(width=200)
    stages = sorted(args.stages)
    rows = [run_stage(args.instance, n, console) for n in stages]
    console.print(table(stages, rows))


if __name__ == "__main__":
    main()
