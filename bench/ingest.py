"""Ingest throughput, online vs bulk: graphs/s, relationships/s and store bytes per graph, synthetic graphs.

Shape (defaults; flags change them): a pruned graph of a 26-layer model over a 12-token prompt keeps
~1,000 nodes (900 features, 80 error nodes, 12 tokens, 10 logits) and 20,000 edges, about what
circuit-tracer's default pruning (node 0.8, edge 0.98) leaves for Gemma-2-2B-sized graphs. Features
come from a 16,384-feature-per-layer dictionary with Zipf-like popularity, so graphs share features
the way real prompts do and the aggregated ATTRIBUTES graph sees both MERGE hits and creations.

Online: the real path (AttributionGraph -> rows_from_graph -> write_graph, one transaction per graph,
`--writers` of them at once), timed from ready rows (built 100 graphs at a time, off the clock). Each
graph's write time is kept, and the median of the first and of the last tenth of the run (at least 5
graphs each) is printed with their ratio: a write that grows with what is already loaded shows as a
ratio above 1 (the guard: at 1,000 graphs it must stay under 1.5); a line per 100 graphs shows the
rate while the run goes on. Bulk: the same graphs saved as files, then `ingest.bulk.bulk_import_files`
(read files -> CSV -> stop, neo4j-admin import, start -> schema + job), timed end to end; the importer
alone is shown too. The bench runs its own local Neo4j instance "bench" with `circuitbase neo4j start`'s
default heap (4g) and page cache (2g) (wiped first, stopped at the end); with CIRCUITBASE_NEO4J_URI and
`--wipe` it times the online path there only. Each size given to `--graphs` is a separate run on an
empty database. With two or more sizes on the local instance, a sizing table follows: nodes,
relationships, the bulk-loaded store and both load times per graph, extrapolated to 100K and 1M graphs
(`sizing.py` gives the model).

    python bench/ingest.py                         # 25 graphs, ~2 minutes on 2 CPU cores
    python bench/ingest.py --graphs 25 1000        # the regression guard: ~45 minutes on 2 CPU cores
    python bench/ingest.py --graphs 200 --edges 50000 --writers 1
    python bench/ingest.py --graphs 20 60          # sizing: ~14 minutes on 2 busy CPU cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sizing import Quantity, empty_database, sizing_table, store_bytes

from circuitbase.dbserver.config import InstanceConfig, Layout
from circuitbase.dbserver.server import start, stop
from circuitbase.engine.graph import AttributionGraph
from circuitbase.ingest.bulk import bulk_import_files
from circuitbase.ingest.concurrent import run_concurrently
from circuitbase.ingest.jobs import JobRecord
from circuitbase.ingest.model import GraphRows, rows_from_graph
from circuitbase.ingest.schema import apply_schema, wipe_database
from circuitbase.ingest.writer import WriteResult, write_graph
from circuitbase.settings import (
    URI_ENV,
    Neo4jSettings,
    load_neo4j_settings,
    local_instance_settings,
    open_driver,
)

ROWS_CHUNK = 100  # graphs whose rows are built at once, off the clock (bounds memory at 1,000 graphs)
BENCH_INSTANCE = InstanceConfig(name="bench", bolt_port=7699, http_port=7486)  # default heap, page cache


def synthetic_graph(
    rng: np.random.Generator,
    index: int,
    *,
    layers: int,
    positions: int,
    features: int,
    errors: int,
    edges: int,
) -> AttributionGraph:
    """A pruned-graph-shaped AttributionGraph: every feature/token/logit kept, `errors` error nodes kept."""
    n_logits, dictionary = 10, 16_384
    keys: set[tuple[int, int, int]] = set()
    while len(keys) < features:
        layer = int(rng.integers(layers))
        keys.add((layer, int(rng.integers(positions)), int(rng.zipf(1.3) - 1) % dictionary))
    active = torch.tensor(sorted(keys), dtype=torch.long)
    n_err = layers * positions
    n_nodes = features + n_err + positions + n_logits
    mask = torch.ones(n_nodes, dtype=torch.bool)
    mask[features : features + n_err] = False
    mask[features + torch.from_numpy(rng.choice(n_err, size=min(errors, n_err), replace=False))] = True
    kept = mask.nonzero().squeeze(1).numpy()
    targets = np.concatenate([kept[kept < features], np.arange(n_nodes - n_logits, n_nodes)])
    sources = kept[kept < n_nodes - n_logits]
    pairs = np.unique(
        rng.integers(len(targets), size=3 * edges) * n_nodes + rng.integers(len(sources), size=3 * edges)
    )
    pairs = rng.permutation(pairs)[:edges]
    indices = torch.from_numpy(np.stack([targets[pairs // n_nodes], sources[pairs % n_nodes]]))
    weights = torch.from_numpy(rng.normal(size=indices.shape[1]).astype(np.float32))
    adjacency = torch.sparse_coo_tensor(
        indices, weights, (n_nodes, n_nodes), check_invariants=True
    ).coalesce()
    input_ids = rng.integers(50_000, size=positions).tolist()
    return AttributionGraph(
        prompt=f"synthetic prompt {index}",
        input_ids=input_ids,
        input_tokens=[f"t{t}" for t in input_ids],
        model_name="bench-model",
        transcoder_name="bench-transcoders",
        n_layers=layers,
        active_features=active,
        activations=torch.rand(features),
        selected_features=torch.arange(features),
        logit_tokens=torch.from_numpy(rng.choice(50_000, size=n_logits, replace=False)),
        logit_probs=torch.full((n_logits,), 0.09),
        adjacency=adjacency,
        node_influence=torch.rand(n_nodes),
        node_mask=mask,
        edge_mask=torch.ones(adjacency._nnz(), dtype=torch.bool),
        replacement_score=0.7,
        completeness_score=0.9,
        prompt_meta={"id": f"bench-{index:05d}"},
    )


def online(
    settings: Neo4jSettings, warmup: AttributionGraph, graphs: list[AttributionGraph], *, writers: int
) -> dict:
    """Write every graph through write_graph, `writers` at once; rows are built before the clock runs."""
    seconds, times, relationships, edges = 0.0, [], 0, 0
    with open_driver(settings) as driver:
        wipe_database(driver, database=settings.database)
        apply_schema(driver, database=settings.database)
        job = JobRecord(driver, database=settings.database).start({"mode": "bench"})
        write_graph(driver, rows_from_graph(warmup), database=settings.database)  # JIT, query plans

        def timed(rows: GraphRows) -> tuple[float, float, WriteResult]:
            t0 = time.perf_counter()
            result = write_graph(driver, rows, job=job.id, database=settings.database)
            return t0, time.perf_counter() - t0, result

        for start in range(0, len(graphs), ROWS_CHUNK):
            rows = [rows_from_graph(g) for g in graphs[start : start + ROWS_CHUNK]]
            t0 = time.perf_counter()
            results = run_concurrently(timed, rows, workers=writers)
            elapsed = time.perf_counter() - t0
            seconds += elapsed
            times += [t for _, t, _ in sorted(results, key=lambda r: r[0])]
            relationships += sum(r.relationships_created for _, _, r in results)
            edges += sum(r.n_edges for r in rows)
            chunk = times[-len(rows) :]
            print(  # a slowdown shows while a long run goes on, not only in its final table
                f"  online: {len(times):,}/{len(graphs):,} graphs, {len(rows) / elapsed:.2f} graphs/s over"
                f" the last {len(rows)}, median write {statistics.median(chunk):.2f} s",
                flush=True,
            )
        job.finish("finished")
        records, _, _ = driver.execute_query("MATCH ()-[e:ATTRIBUTES]->() RETURN count(e) AS n")
    return {
        "seconds": seconds,
        "times": times,
        "relationships": relationships,
        "edges": edges,
        "aggregated": records[0]["n"],
    }


def first_last(times: list[float]) -> tuple[float, float]:
    """Median write time of the first and of the last tenth of the graphs (at least 5, at most half)."""
    window = max(1, min(len(times) // 2, max(5, len(times) // 10)))
    return statistics.median(times[:window]), statistics.median(times[-window:])


def bulk(layout: Layout, graphs: list[AttributionGraph], directory: Path) -> dict:
    """Graph files -> CSV -> neo4j-admin import into the emptied bench instance -> restart + schema."""
    paths = [g.save(directory / f"{i:05d}.safetensors") for i, g in enumerate(graphs)]
    empty_database(BENCH_INSTANCE.name, layout=layout)  # the import starts it to check it is empty
    t0 = time.perf_counter()
    result = bulk_import_files(paths, instance=BENCH_INSTANCE.name, layout=layout)
    return {
        "seconds": time.perf_counter() - t0,
        "csv": result.csv_seconds,
        "import": result.import_seconds,
        "nodes": result.summary.nodes,
        "relationships": result.summary.relationships,
    }


def run_size(args: argparse.Namespace, n_graphs: int) -> dict:
    """Online then bulk runs of `n_graphs` graphs (after one warm-up graph) on an empty database."""
    rng = np.random.default_rng(0)
    shape = {k: getattr(args, k) for k in ("layers", "positions", "features", "errors", "edges")}
    warmup, *graphs = [synthetic_graph(rng, i, **shape) for i in range(n_graphs + 1)]
    sizes: dict[str, float] = {}
    if os.environ.get(URI_ENV):  # a remote server: online only, no store sizes
        runs = {"online": online(load_neo4j_settings(), warmup, graphs, writers=args.writers)}
    else:
        layout = Layout.resolve()
        root = empty_database(BENCH_INSTANCE.name, layout=layout)
        start(BENCH_INSTANCE, layout=layout, log=lambda _line: None)
        settings = local_instance_settings(name=BENCH_INSTANCE.name, cache_dir=layout.root)
        try:
            before = store_bytes(root)
            runs = {"online": online(settings, warmup, graphs, writers=args.writers)}
            stop(BENCH_INSTANCE.name, layout=layout)  # checkpoints: store files now hold all
            sizes["online"] = (store_bytes(root) - before) / (n_graphs + 1)
            with tempfile.TemporaryDirectory() as directory:
                runs["bulk"] = bulk(layout, graphs, Path(directory))
            stop(BENCH_INSTANCE.name, layout=layout)
            runs["bulk"]["store"] = store_bytes(root)
            sizes["bulk"] = runs["bulk"]["store"] / n_graphs
        finally:
            stop(BENCH_INSTANCE.name, layout=layout)

    first = runs["online"]
    print(
        f"shape: {shape}; {n_graphs} graphs, {args.writers} writer(s), {first['edges']:,} EDGE, "
        f"{first['aggregated']:,} ATTRIBUTES after load; load average {os.getloadavg()[0]:.2f}"
    )
    header = (("graphs/s", 10), ("rels/s", 12), ("seconds", 9), ("MB/graph", 10), ("import-only rels/s", 20))
    print(f"{'path':<8}" + "".join(f"{name:>{width}}" for name, width in header))
    for name, run in runs.items():
        importer = f"{run['relationships'] / run['import']:,.0f}" if "import" in run else "-"
        print(
            f"{name:<8}{n_graphs / run['seconds']:>10.2f}{run['relationships'] / run['seconds']:>12,.0f}"
            f"{run['seconds']:>9.1f}{sizes.get(name, float('nan')) / 1e6:>10.2f}{importer:>20}"
        )
    if "bulk" in runs:
        b = runs["bulk"]
        print(
            f"bulk phases: CSV {b['csv']:.1f}s, stop + import + start {b['import']:.1f}s, "
            f"schema + job {b['seconds'] - b['csv'] - b['import']:.1f}s\n"
        )
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--graphs",
        type=int,
        nargs="+",
        default=[25],
        help="graphs timed per run, after one warm-up (default 25)",
    )
    parser.add_argument("--writers", type=int, default=1, help="concurrent online writers (default 1)")
    parser.add_argument("--features", type=int, default=900, help="feature nodes per graph (default 900)")
    parser.add_argument("--errors", type=int, default=80, help="kept error nodes per graph (default 80)")
    parser.add_argument("--edges", type=int, default=20_000, help="pruned edges per graph (default 20,000)")
    parser.add_argument("--layers", type=int, default=26)
    parser.add_argument("--positions", type=int, default=12)
    parser.add_argument("--wipe", action="store_true", help=f"allow wiping the server in {URI_ENV}")
    args = parser.parse_args()
    if os.environ.get(URI_ENV) and not args.wipe:
        raise SystemExit(f"the bench wipes its database: pass --wipe to use the server in {URI_ENV}")

    table = [(n, run_size(args, n)) for n in sorted(set(args.graphs))]
    columns = (
        ("graphs", 7),
        ("online graphs/s", 16),
        ("online rels/s", 14),
        ("bulk rels/s", 12),
        ("online/bulk", 12),
        ("first s/graph", 14),
        ("last s/graph", 13),
        ("last/first", 11),
    )
    print("".join(f"{name:>{width}}" for name, width in columns))
    for n, runs in table:
        o = runs["online"]
        rate = o["relationships"] / o["seconds"]
        bulk_rate = (
            runs["bulk"]["relationships"] / runs["bulk"]["seconds"] if "bulk" in runs else float("nan")
        )
        start, end = first_last(o["times"])
        print(
            f"{n:>7}{n / o['seconds']:>16.2f}{rate:>14,.0f}{bulk_rate:>12,.0f}{rate / bulk_rate:>12.2f}"
            f"{start:>14.2f}{end:>13.2f}{end / start:>11.2f}"
        )
    if len(table) > 1 and all("bulk" in runs for _, runs in table):
        Console(width=200).print(sizing(table))


def sizing(table: list[tuple[int, dict]]) -> Table:
    """The sizing table (see `sizing.py`) of the bulk-loaded database and both load paths' seconds."""
    sizes = [n for n, _ in table]
    bulk_runs = [runs["bulk"] for _, runs in table]
    quantities = [
        Quantity("nodes", "count", [b["nodes"] for b in bulk_runs]),
        Quantity("relationships", "count", [b["relationships"] for b in bulk_runs]),
        Quantity("store (bulk)", "bytes", [b["store"] for b in bulk_runs]),
        Quantity("load online", "seconds", [runs["online"]["seconds"] for _, runs in table]),
        Quantity("load bulk", "seconds", [b["seconds"] for b in bulk_runs]),
    ]
    return sizing_table(sizes, quantities, title="sizing: measured, per graph, growth, extrapolated")


if __name__ == "__main__":
    main()
