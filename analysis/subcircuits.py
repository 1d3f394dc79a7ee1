"""Recurring subcircuit mining: closed connected sets of feature-level edges that occur in >= k graphs.

Definitions (also in cypher/README.md, "Recurrence"): an edge (u, v) between global nodes (Feature or
Token) occurs in a complete graph g when an EDGE of g from an instance of u to an instance of v has
|weight| >= `min_weight`. A subcircuit S (a connected set of such edges) occurs in g when all of its edges
do; its support is the number of those graphs. S recurs when support >= k = max(`min_support`,
ceil(`min_support_fraction` * complete graphs)). The miner reports *closed* recurring subcircuits: adding
any adjacent recurring edge would lose at least one of S's graphs.

1. Candidates: aggregated ATTRIBUTES edges seen in >= k graphs (an upper bound of the support). Check
   them in batches (`recurring_edges.cypher`, bounded transaction memory) and stream back the recurring
   edges (support >= k) with their graphs and per-graph weights; each edge's graphs become a bitset.
2. Seeds: every recurring edge, and every pair of recurring edges sharing a node whose common graphs
   still number >= k (at most `max_pairs` pairs, strongest first).
3. Close each seed: repeatedly add every adjacent recurring edge whose graphs include all of the seed's
   graphs (support unchanged). Identical closures are merged; those with < `min_edges` edges dropped.
4. Keep the `max_subcircuits` with the largest support (then summed |weight|), replace all
   `(:Subcircuit)` nodes with them: `HAS_MEMBER` to their Features/Tokens, `OCCURS_IN {weight,
   influence}` to their graphs; influence = largest influence of a member feature's instance in that
   graph; rank by support, then mean influence.

Why client-side: closed frequent-subgraph mining is neither a GDS algorithm nor expressible as one Cypher
query. Only the recurring edges (usually a small share of all edges) are held in Python, as graph
bitsets; everything else stays in the database and the results are written back to it.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

import neo4j

from circuitbase.analysis.gds import AnalysisError, complete_graph_count, finish_run, record_run
from circuitbase.analysis.queries import load_query

STEP = "subcircuits"

_CLEAR = "MATCH (s:Subcircuit) DETACH DELETE s"
_WRITE = """
UNWIND $rows AS r
CREATE (s:Subcircuit {key: r.key, run: $run, support: r.support, support_fraction: r.support_fraction,
                      weight: r.weight, weight_abs: r.weight_abs, sources: r.sources, targets: r.targets,
                      n_edges: size(r.sources), n_nodes: size(r.members)})
WITH s, r
CALL (s, r) {
  UNWIND r.members AS key
  OPTIONAL MATCH (f:Feature {key: key})
  OPTIONAL MATCH (t:Token {key: key})
  WITH coalesce(f, t) AS member WHERE member IS NOT NULL
  CREATE (s)-[:HAS_MEMBER]->(member)
}
CALL (s, r) {
  UNWIND r.occurrences AS o
  MATCH (g:Graph {id: o.graph})
  CREATE (s)-[:OCCURS_IN {weight: o.weight}]->(g)
}
"""
_INFLUENCE = """
MATCH (s:Subcircuit)-[o:OCCURS_IN]->(g:Graph)
CALL (s, g) {
  OPTIONAL MATCH (s)-[:HAS_MEMBER]->(:Feature)<-[:INSTANCE_OF]-(n:FeatureNode {graph: g.id})
  RETURN coalesce(max(n.influence), 0.0) AS influence
}
SET o.influence = influence
WITH s, avg(influence) AS influence
SET s.influence = influence
"""
_RANK = """
MATCH (s:Subcircuit)
WITH s ORDER BY s.support DESC, s.influence DESC, s.weight_abs DESC, s.key
WITH collect(s) AS ranked
UNWIND range(0, size(ranked) - 1) AS i
WITH ranked[i] AS s, i
SET s.rank = i + 1
"""


@dataclass(frozen=True)
class SubcircuitConfig:
    """min_weight: smallest |edge weight| that counts as an occurrence (default 0.05). min_support and
    min_support_fraction: k = max(min_support, ceil(fraction * complete graphs)) (defaults 2 and 0.05).
    min_edges: smallest subcircuit reported (default 2). max_pairs: pair seeds tried (default 20,000).
    max_subcircuits: how many are written (default 500). batch: subcircuits per write (default 200)."""

    min_weight: float = 0.05
    min_support: int = 2
    min_support_fraction: float = 0.05
    min_edges: int = 2
    max_pairs: int = 20_000
    max_subcircuits: int = 500
    batch: int = 200


@dataclass
class RecurringEdges:
    """Recurring edges as parallel lists: endpoints, graph bitsets, per-graph weights (graph ordinal ->)."""

    graph_ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    graphs: list[int] = field(default_factory=list)  # bit i set: occurs in graph_ids[i]
    weights: list[dict[int, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sources)


@dataclass(frozen=True)
class Subcircuit:
    """A closed recurring subcircuit: indices into RecurringEdges and the bitset of graphs it occurs in."""

    edges: frozenset[int]
    graphs: int

    @property
    def support(self) -> int:
        return self.graphs.bit_count()


def stream_recurring_edges(
    driver: neo4j.Driver, *, min_weight: float, min_support: int, batch: int = 500, database: str = "neo4j"
) -> RecurringEdges:
    """The recurring edges, checked `batch` candidate pairs per query (bounded server memory), each
    record turned into a bitset as it arrives."""
    out = RecurringEdges()
    ordinal: dict[str, int] = {}
    with driver.session(database=database, default_access_mode=neo4j.READ_ACCESS) as session:
        candidates = session.run(load_query("recurring_candidates"), min_support=min_support)
        pairs = [[record["source"], record["target"]] for record in candidates]
        for start in range(0, len(pairs), max(1, batch)):
            result = session.run(
                load_query("recurring_edges"),
                pairs=pairs[start : start + batch],
                min_weight=min_weight,
                min_support=min_support,
            )
            for record in result:
                bits, weights = 0, {}
                for graph, weight in zip(record["graphs"], record["weights"], strict=True):
                    i = ordinal.setdefault(graph, len(ordinal))
                    bits |= 1 << i
                    weights[i] = float(weight)
                out.sources.append(record["source"])
                out.targets.append(record["target"])
                out.graphs.append(bits)
                out.weights.append(weights)
    out.graph_ids = list(ordinal)
    return out


def _incident(edges: RecurringEdges) -> dict[str, list[int]]:
    incident: dict[str, list[int]] = defaultdict(list)
    for i, (s, t) in enumerate(zip(edges.sources, edges.targets, strict=True)):
        incident[s].append(i)
        if t != s:
            incident[t].append(i)
    return incident


def _close(
    seed: Iterable[int], graphs: int, edges: RecurringEdges, incident: dict[str, list[int]]
) -> Subcircuit:
    """Add adjacent edges whose graphs include `graphs` until none is left (support stays the same)."""
    members = set(seed)
    frontier = {n for e in members for n in (edges.sources[e], edges.targets[e])}
    while frontier:
        grown: set[str] = set()
        for node in frontier:
            for e in incident[node]:
                if e not in members and graphs & ~edges.graphs[e] == 0:
                    members.add(e)
                    grown.update((edges.sources[e], edges.targets[e]))
        frontier = grown
    return Subcircuit(frozenset(members), graphs)


def mine(edges: RecurringEdges, *, k: int, min_edges: int, max_pairs: int) -> list[Subcircuit]:
    """Closed connected subcircuits of support >= k (steps 2-3 of the module docstring), unordered."""
    incident = _incident(edges)
    seeds: list[tuple[tuple[int, ...], int]] = [((e,), edges.graphs[e]) for e in range(len(edges))]
    pairs: set[tuple[int, int]] = set()
    for node_edges in incident.values():
        for a, b in combinations(sorted(node_edges), 2):
            common = edges.graphs[a] & edges.graphs[b]
            if common.bit_count() >= k and common not in (edges.graphs[a], edges.graphs[b]):
                pairs.add((a, b))  # a pair whose graphs equal one edge's is that edge's closure already
    strongest = sorted(pairs, key=lambda p: -(edges.graphs[p[0]] & edges.graphs[p[1]]).bit_count())
    seeds += [((a, b), edges.graphs[a] & edges.graphs[b]) for a, b in strongest[:max_pairs]]
    found: dict[frozenset[int], Subcircuit] = {}
    for seed, graphs in seeds:
        sub = _close(seed, graphs, edges, incident)
        if len(sub.edges) >= min_edges:
            found.setdefault(sub.edges, sub)
    return list(found.values())


def _occurrences(sub: Subcircuit, edges: RecurringEdges) -> list[dict[str, Any]]:
    graphs = [i for i in range(len(edges.graph_ids)) if sub.graphs >> i & 1]
    return [
        {"graph": edges.graph_ids[g], "weight": sum(edges.weights[e][g] for e in sub.edges)} for g in graphs
    ]


def _row(sub: Subcircuit, edges: RecurringEdges, n_graphs: int) -> dict[str, Any]:
    order = sorted(sub.edges, key=lambda e: (edges.sources[e], edges.targets[e]))
    sources = [edges.sources[e] for e in order]
    targets = [edges.targets[e] for e in order]
    occurrences = _occurrences(sub, edges)
    text = "\n".join(f"{s}->{t}" for s, t in zip(sources, targets, strict=True))
    weights = [o["weight"] for o in occurrences]
    return {
        "key": hashlib.sha1(text.encode()).hexdigest()[:16],
        "support": sub.support,
        "support_fraction": sub.support / n_graphs,
        "weight": sum(weights) / len(weights),
        "weight_abs": sum(abs(w) for w in weights) / len(weights),
        "sources": sources,
        "targets": targets,
        "members": sorted(set(sources) | set(targets)),
        "occurrences": occurrences,
    }


def mine_subcircuits(
    driver: neo4j.Driver, *, config: SubcircuitConfig | None = None, database: str = "neo4j"
) -> dict[str, Any]:
    """Run the whole step (see the module docstring); returns k, counts and the top subcircuit's support."""
    config = config or SubcircuitConfig()
    n_graphs = complete_graph_count(driver, database=database)
    if n_graphs == 0:
        raise AnalysisError("no complete graphs to mine subcircuits from")
    k = max(config.min_support, math.ceil(config.min_support_fraction * n_graphs))
    record_run(driver, STEP, {**asdict(config), "k": k, "graphs": n_graphs}, database=database)
    edges = stream_recurring_edges(driver, min_weight=config.min_weight, min_support=k, database=database)
    found = mine(edges, k=k, min_edges=config.min_edges, max_pairs=config.max_pairs)
    rows = [_row(sub, edges, n_graphs) for sub in found]
    rows.sort(key=lambda r: (-r["support"], -r["weight_abs"], r["key"]))
    rows = rows[: config.max_subcircuits]
    with driver.session(database=database) as session:
        session.run(_CLEAR).consume()
        for start in range(0, len(rows), max(1, config.batch)):
            session.run(_WRITE, rows=rows[start : start + config.batch], run=STEP).consume()
        session.run(_INFLUENCE).consume()
        session.run(_RANK).consume()
    result = {
        "k": k,
        "graphs": n_graphs,
        "recurring_edges": len(edges),
        "closed_subcircuits": len(found),
        "written": len(rows),
        "top_support": rows[0]["support"] if rows else 0,
    }
    finish_run(driver, STEP, result, database=database)
    return result
