"""Analysis at scale: seconds per analysis step and GDS memory on 1K and 10K graphs, and how they grow.

Data: synthetic pruned graphs with two planted circuits (circuitbase.analysis.synthetic) sized like pruned
graphs of a small model: 12 layers, 16 prompt tokens, 10 logits, 150 noise features per graph drawn from
3,000 per layer (36,000 features; index = 3000 * u**3, so a few features are common and most are rare, as
in real transcoders), 4,000 random node pairs tried as edges, kept when they go from a lower to a higher
layer: about 190 nodes and 1,750 edges per graph (seed 7; graph i is always the same graph).

Each stage (default 1,000 and 10,000 graphs) starts from an empty database (the instance is stopped and
its database's files deleted): the graphs are made one at a time (in a second process) and loaded with the
bulk path (`ingest.bulk.bulk_import_rows`: CSV files, `neo4j-admin database import full`), which keeps only
the shared nodes and the aggregated ATTRIBUTES sums in memory, never all graphs; the table shows the bench
process's peak memory. Then every analysis step runs once, timed (communities, subcircuits, similarity,
hubs as `circuitbase analyze` runs them, then compare on the correct/incorrect split), and GDS's
`.estimate` of each step's algorithms (write mode, the settings `analyze` uses) is read on the step's real
projection, next to the projection's own size. Last the instance is stopped and the store files (the
loaded and analysed database, transaction logs excluded) measured. The first table gives each figure per
stage and the growth from the first stage to the last.

The sizing table (`sizing.py` gives the model) extrapolates nodes, relationships, store size, load time and
each step's time to 100K and 1M graphs. Each GDS step's memory there is GDS's own `.estimate` on a
fictive graph (`nodeCount`, `relationshipCount`; the projection included) of the step's projection's node
and relationship counts: as measured at each stage, and at the targets as the table extrapolates them
(the aggregated graph's nodes and the features graphs use capped at the dictionary and vocabulary).

Real graphs (`--real-graphs DIR`: graph files, e.g. of the SmolLM2 study's prompts varied by
`bench/study_variants.py`): stage n loads the first n files in name order. Past the k files there, graph i
is file i mod k again under a new prompt id ("<prompt>~<round>"), which keeps the density and multiplies
the recurrence. The sizing table is left out there: its ceilings are the synthetic dictionary's.

The benchmark DELETES the database of the local instance it loads (`--instance`, made beforehand with
`circuitbase neo4j start --instance NAME`; the bulk path refuses a remote server), so it only runs with
--wipe. The instance is left running.

    python bench/analysis.py --wipe --instance bench-analysis --stages 1000 10000
    python bench/analysis.py --wipe --instance bench-analysis --stages 100 300 1000  # ~10 min, 2 cores
    python bench/analysis.py --wipe --instance bench-analysis --real-graphs GRAPHS --stages 100 300 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import multiprocessing
import resource
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from graphdatascience import Graph, GraphDataScience
from rich.console import Console
from rich.table import Table
from sizing import TARGETS, Quantity, empty_database, fit, sizing_table, store_bytes

from circuitbase.analysis.compare import Split, compare
from circuitbase.analysis.gds import aggregated_projection, open_gds, projection
from circuitbase.analysis.run import MODEL_STEPS, STEPS, AnalysisConfig, run_step
from circuitbase.analysis.similarity import PROJECTION
from circuitbase.analysis.synthetic import SyntheticConfig, synthetic_graph
from circuitbase.dbserver.config import Layout
from circuitbase.dbserver.server import start, stop
from circuitbase.ingest.bulk import bulk_import_rows
from circuitbase.ingest.loader import graph_files, read_graph_rows
from circuitbase.ingest.model import GraphRows, graph_id
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
# faithfulness and causal run the graphs' model (forwards per graph and per occurrence), which synthetic
# graphs have none of: their cost is the model's (bench/causal.py), not the database's
TIMED = (*(step for step in STEPS if step not in MODEL_STEPS), "compare")
CONFIG = AnalysisConfig()  # what `circuitbase analyze` runs
# step -> (its projection: the aggregated feature graph or the graph-feature bipartite one, orientation)
PROJECTIONS = {
    "communities": ("aggregated", "UNDIRECTED"),
    "hubs": ("aggregated", "NATURAL"),
    "similarity": ("similarity", "NATURAL"),
}
RELATIONSHIPS = {"aggregated": ("ATTRIBUTES", ["weight", "graphs"]), "similarity": ("USES_FEATURE", [])}
# the features graphs can use: the noise pool of every layer and the planted circuits' features
FEATURES = REALISTIC.n_layers * REALISTIC.feature_pool + sum(len(c.features) for c in REALISTIC.circuits)


def algorithms(nodes: int) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Per GDS step: the write procedures it runs with CONFIG's settings, on a projection of `nodes` nodes."""
    c, h, s = CONFIG.communities, CONFIG.hubs, CONFIG.similarity
    community: dict[str, Any] = {"writeProperty": "community", "relationshipWeightProperty": "weight"}
    if c.algorithm == "leiden":
        community |= {"randomSeed": c.seed, "gamma": c.resolution}
    rank = {"writeProperty": "pagerank", "relationshipWeightProperty": "weight", "dampingFactor": h.damping}
    betweenness: dict[str, Any] = {"writeProperty": "betweenness"}
    if h.betweenness_sources is not None and nodes > h.betweenness_sources:
        betweenness |= {"samplingSize": h.betweenness_sources, "samplingSeed": h.seed}
    similar = {"writeRelationshipType": "SIMILAR", "writeProperty": "score", "topK": s.top_k}
    return {
        "communities": [(f"gds.{c.algorithm}.write", {**community, "concurrency": c.concurrency})],
        "hubs": [
            ("gds.pageRank.write", {**rank, "concurrency": h.concurrency}),
            ("gds.betweenness.write", {**betweenness, "concurrency": h.concurrency}),
        ],
        "similarity": [
            (
                "gds.nodeSimilarity.write",
                {**similar, "similarityCutoff": s.cutoff, "concurrency": s.concurrency},
            )
        ],
    }


def estimate(gds: GraphDataScience, step: str, graph: str | dict[str, Any], nodes: int) -> int:
    """GDS's largest `bytesMax` over `step`'s algorithms on `graph` (a projected graph's name, or a fictive
    graph's configuration: then the projection is included)."""
    return max(
        int(
            gds.run_cypher(
                f"CALL {procedure}.estimate($graph, $config) YIELD bytesMax RETURN bytesMax",
                params={"graph": graph, "config": config},
            ).iloc[0, 0]
        )
        for procedure, config in algorithms(nodes)[step]
    )


def step_projection(gds: GraphDataScience, step: str) -> AbstractContextManager[Graph]:
    """The projection GDS step `step` runs on, made as the step makes it (dropped when the block ends)."""
    if step == "similarity":
        return projection(gds, "bench-similarity", PROJECTION)
    min_graphs = getattr(CONFIG, step).min_graphs
    undirected = PROJECTIONS[step][1] == "UNDIRECTED"
    return aggregated_projection(gds, f"bench-{step}", min_graphs=min_graphs, undirected=undirected)


def gds_memory(gds: GraphDataScience) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    """Per GDS step: its real projection's size + GDS's estimate for its algorithms on it, in MiB; and the
    node and relationship counts of each projection (the aggregated one's as stored: directed)."""
    text: dict[str, str] = {}
    counts: dict[str, tuple[int, int]] = {}
    for step, (kind, orientation) in PROJECTIONS.items():
        with step_projection(gds, step) as g:
            if orientation == "NATURAL":
                counts[kind] = (g.node_count(), g.relationship_count())
            algorithm = estimate(gds, step, g.name(), g.node_count())
            text[step] = f"{g.size_in_bytes() / MIB:,.1f} + {algorithm / MIB:,.1f}"
    return text, counts


def fictive_memory(gds: GraphDataScience, counts: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Per GDS step: GDS's estimate, projection included, on a fictive graph of its projection's `counts`."""
    out: dict[str, int] = {}
    for step, (kind, orientation) in PROJECTIONS.items():
        nodes, relationships = counts[kind]
        kind_name, properties = RELATIONSHIPS[kind]
        graph = {
            "nodeCount": nodes,
            "relationshipCount": relationships,
            "nodeProjection": "*",
            "relationshipProjection": {
                kind_name: {"type": kind_name, "orientation": orientation, "properties": properties}
            },
        }
        out[step] = estimate(gds, step, graph, nodes)
    return out


def real_graphs(paths: Sequence[Path], n_graphs: int) -> Iterator[GraphRows]:
    """`n_graphs` graphs read one at a time: graph i is file i mod k, under prompt id "<prompt>~<round>"
    from round 1 on."""
    for i in range(n_graphs):
        rows, round_ = read_graph_rows(paths[i % len(paths)]), i // len(paths)
        if round_:
            prompt = f"{rows.prompt['id']}~{round_}"
            head = {**rows.graph, "id": graph_id(rows.transcoder_set, prompt), "prompt": prompt}
            rows = dataclasses.replace(rows, graph=head, prompt={**rows.prompt, "id": prompt})
        yield rows


def run_stage(instance: str, n_graphs: int, console: Console, *, real: Sequence[Path] = ()) -> dict[str, Any]:
    """Empty the instance's database, bulk-load `n_graphs` graphs (synthetic, or from the `real` graph
    files), time every step, read GDS memory, stop the instance and measure the store."""
    layout = Layout.resolve()
    root = empty_database(instance, layout=layout)
    settings = local_instance_settings(name=instance)
    started = time.perf_counter()
    parameters = {"bench": "analysis"}
    if real:
        loaded = bulk_import_rows(real_graphs(real, n_graphs), instance=instance, parameters=parameters)
    else:
        with multiprocessing.Pool(1) as pool:  # one process makes graphs while this one writes CSV rows
            make = functools.partial(synthetic_graph, config=REALISTIC)
            graphs = pool.imap(make, range(n_graphs), chunksize=50)
            loaded = bulk_import_rows(graphs, instance=instance, parameters=parameters)
    with open_driver(settings) as driver:  # the schema's indexes are built after the import
        driver.execute_query("CALL db.awaitIndexes(3600)", database_=settings.database)
    row: dict[str, Any] = {
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
                run_step(driver, step, config=CONFIG, database=settings.database)
            row[step] = time.perf_counter() - started
            console.print(f"{n_graphs:,} graphs: {step} {row[step]:.1f} s")
        gds = open_gds(driver, database=settings.database)
        text, row["counts"] = gds_memory(gds)
        row.update({f"{step} GDS": value for step, value in text.items()})
        row["fictive"] = fictive_memory(gds, row["counts"])
        records, _, _ = driver.execute_query(
            "MATCH ()-[e:ATTRIBUTES]->() RETURN count(e) AS n", database_=settings.database
        )
        row["attributes"] = records[0]["n"]
    stop(instance, layout=layout)  # every page on disk
    row["store"] = store_bytes(root)
    return row


def table(stages: list[int], rows: list[dict[str, Any]]) -> Table:
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


def projection_counts(stages: list[int], rows: list[dict[str, Any]]) -> list[Quantity]:
    """What the GDS projections' sizes follow, per stage: all aggregated ATTRIBUTES edges, the aggregated
    graph's nodes (features and tokens: at most the dictionary and the vocabulary) and relationships (those
    seen in 2+ graphs: at most all of them), the features the graphs use (the similarity projection's
    nodes less its graphs: at most the dictionary) and the graph-feature pairs."""
    aggregated = [r["counts"]["aggregated"] for r in rows]
    similarity = [r["counts"]["similarity"] for r in rows]
    attributes = Quantity("ATTRIBUTES edges", "count", [r["attributes"] for r in rows])
    rels = fit(stages, [c[1] for c in aggregated])
    bounded = zip(attributes.extrapolated(stages), (rels.at(n) for n in TARGETS), strict=True)
    return [
        attributes,
        Quantity("aggregated nodes", "count", [c[0] for c in aggregated], ceiling=FEATURES + REALISTIC.vocab),
        Quantity(
            "aggregated rels",
            "count",
            [c[1] for c in aggregated],
            at_targets=[min(pair) for pair in bounded],
            model=f"{'power law' if rels.superlinear else 'linear'}, at most the ATTRIBUTES edges",
        ),
        Quantity(
            "features used",
            "count",
            [c[0] - n for c, n in zip(similarity, stages, strict=True)],
            ceiling=FEATURES,
        ),
        Quantity("graph-feature pairs", "count", [c[1] for c in similarity]),
    ]


def extrapolated_memory(
    instance: str, stages: list[int], rows: list[dict[str, Any]], counts: list[Quantity]
) -> list[Quantity]:
    """Per GDS step: its estimate at each stage, and at the targets on its projection's counts extrapolated
    as `counts` (projection_counts) are; starts the instance to ask GDS."""
    _, nodes, rels, features, pairs = (q.extrapolated(stages) for q in counts)
    layout = Layout.resolve()
    stored = layout.load_instance(instance)
    assert stored is not None  # it ran every stage
    start(stored, layout=layout, log=lambda _line: None)
    settings = local_instance_settings(name=instance)
    at_targets: dict[str, list[int]] = {step: [] for step in PROJECTIONS}
    with open_driver(settings) as driver:
        gds = open_gds(driver, database=settings.database)
        for i, n in enumerate(TARGETS):
            target_counts = {
                "aggregated": (round(nodes[i]), round(rels[i])),
                "similarity": (n + round(features[i]), round(pairs[i])),
            }
            for step, value in fictive_memory(gds, target_counts).items():
                at_targets[step].append(value)
    return [
        Quantity(
            f"{step} GDS memory",
            "bytes",
            [r["fictive"][step] for r in rows],
            at_targets=at_targets[step],
            model="GDS .estimate at the extrapolated counts",
        )
        for step in PROJECTIONS
    ]


def sizing(instance: str, stages: list[int], rows: list[dict[str, Any]]) -> Table:
    """The sizing table of every figure (see `sizing.py`), GDS memory from GDS's estimates."""
    counts = projection_counts(stages, rows)
    quantities = [
        Quantity("nodes", "count", [r["nodes"] for r in rows]),
        Quantity("relationships", "count", [r["relationships"] for r in rows]),
        Quantity("store (analysed)", "bytes", [r["store"] for r in rows]),
        Quantity("load (bulk)", "seconds", [r["load"] for r in rows]),
        *(Quantity(step, "seconds", [r[step] for r in rows]) for step in TIMED),
        *counts,
        *extrapolated_memory(instance, stages, rows, counts),
    ]
    return sizing_table(stages, quantities, title="sizing: measured, per graph, growth, extrapolated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[1000, 10_000], help="graph counts")
    parser.add_argument(
        "--instance", default="bench-analysis", help="local instance loaded (made beforehand)"
    )
    parser.add_argument("--wipe", action="store_true", help="required: the benchmark empties the database")
    parser.add_argument(
        "--real-graphs", type=Path, help="a folder of graph files to repeat instead of synthetic graphs"
    )
    args = parser.parse_args()
    if not args.wipe:
        parser.error("the benchmark deletes everything in the database; pass --wipe to confirm")
    stages = sorted(set(args.stages))
    if len(stages) < 2:
        parser.error("give two or more --stages: growth and sizing need two sizes")
    console = Console(width=200)
    real = graph_files(args.real_graphs) if args.real_graphs else []
    rows = [run_stage(args.instance, n, console, real=real) for n in stages]
    console.print(table(stages, rows))
    if not real:
        console.print(sizing(args.instance, stages, rows))


if __name__ == "__main__":
    main()
