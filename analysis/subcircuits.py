"""Recurring subcircuit mining: closed, specific, connected sets of feature-level edges in >= k graphs.

Definitions (also in cypher/README.md, "Recurrence"): an edge (u, v) between global nodes (Feature or
Token) occurs in a complete graph g when an EDGE of g from an instance of u to an instance of v has
|weight| >= `min_weight`, unless u is a start token (a Token that complete graphs hold at position 0 and
never later: the special token put before every prompt, e.g. BOS). A subcircuit S is a set of such
edges, connected through its Features and through the logits its Features feed (its *joints*); it
occurs in g when all of its edges do; its support is the number of those graphs, and it recurs when
support >= k = max(`min_support`, ceil(`min_support_fraction` * complete graphs)). Its specificity is
support / the largest feature support of its Features (feature support: complete graphs keeping an
instance of it), and it is specific when specificity >= `min_specificity`. The miner reports *closed*
specific recurring subcircuits (no adjacent recurring edge can be added without losing one of S's graphs
or its specificity) that no larger one *covers* (holds all of S's edges and occurs in at least
(1 - `subset_tolerance`) of S's support).

1. Start tokens; candidates: aggregated ATTRIBUTES edges seen in >= k graphs (an upper bound of the
   support), not from a start token. Check them in batches (`recurring_edges.cypher`, bounded transaction
   memory) and stream back the recurring edges (support >= k) with their graphs, per-graph weights and
   influences; each edge's graphs become a bitset. Then the feature support of their Features.
2. Seeds: every specific recurring edge, and every pair of recurring edges sharing a joint whose common
   graphs still number >= k and which is specific there (at most `max_pairs` pairs, strongest first).
3. Close each seed: repeatedly add every edge sharing a joint with it whose graphs include all of the
   seed's graphs and whose Features keep it specific. Identical closures are merged; those with <
   `min_edges` edges dropped, then those covered by a larger closure.
4. Rank by total influence (the sum over S's graphs of its influence there: the largest influence of an
   instance of a member Feature on one of S's edges), then support; replace all `(:Subcircuit)` nodes
   with the best `max_subcircuits`: `HAS_MEMBER` to their Features/Tokens, `OCCURS_IN {weight,
   influence}` to their graphs.

Why: support alone favours what every prompt shares. A generic Feature (kept in most prompts of a
template) would join every closure over those prompts and swallow the specific ones; specificity (the
h-confidence of frequent-pattern mining) keeps it out. Input tokens are the prompt's words: every feature
of a prompt reads the same tokens, so edges meeting only at an input Token are not one mechanism. A logit
fed by Features is different: Features that drive the same answer in the same graphs are parallel paths
of one mechanism (a model often spreads an intermediate concept over several features, each carrying a
part of the answer; apart, each is a fragment that explains little of it). A token-to-logit edge holds no
Feature and joins nothing. A start token is a constant: causal attention makes position 0 the same in
every prompt that starts with it (attribution zeroes the features at that position for that reason), so
its edges, which reach every subcircuit, explain nothing. A word that starts a prompt also occurs later in
others, so it stays. Covered closures: a closure that one more feature's edges would complete in all but
a graph or two of its own is that larger mechanism seen partially, and listing both ranks the same
mechanism twice (closed-pattern mining's delta-tolerance). Total influence ranks what carries the output,
summed over the graphs.

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

_START_TOKENS = """
MATCH (g:Graph)<-[:IN_GRAPH]-(:TokenNode {position: 0})-[:INSTANCE_OF]->(t:Token)
WHERE g.complete = true
WITH DISTINCT t
WHERE NOT EXISTS {
  MATCH (t)<-[:INSTANCE_OF]-(n:TokenNode)-[:IN_GRAPH]->(h:Graph)
  WHERE n.position > 0 AND h.complete = true
}
RETURN t.key AS key
ORDER BY key
"""
_FEATURE_SUPPORT = """
UNWIND $keys AS key
MATCH (:Feature {key: key})<-[:INSTANCE_OF]-(:FeatureNode)-[:IN_GRAPH]->(g:Graph)
WHERE g.complete = true
RETURN key, count(DISTINCT g) AS graphs
"""
_CLEAR = "MATCH (s:Subcircuit) DETACH DELETE s"
_WRITE = """
UNWIND $rows AS r
CREATE (s:Subcircuit {key: r.key, run: $run, rank: r.rank, support: r.support,
                      support_fraction: r.support_fraction, specificity: r.specificity,
                      influence: r.influence, total_influence: r.total_influence, weight: r.weight,
                      weight_abs: r.weight_abs, sources: r.sources, targets: r.targets,
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
  CREATE (s)-[:OCCURS_IN {weight: o.weight, influence: o.influence}]->(g)
}
"""


@dataclass(frozen=True)
class SubcircuitConfig:
    """min_weight: smallest |edge weight| that counts as an occurrence (default 0.05). min_support and
    min_support_fraction: k = max(min_support, ceil(fraction * complete graphs)) (defaults 2 and 0.05).
    min_specificity: least support / feature support of every member Feature (default 0.6).
    min_edges: smallest subcircuit reported (default 2). max_pairs: pair seeds tried (default 20,000).
    subset_tolerance: a closure is dropped when a larger one holding all its edges occurs in at least
    (1 - subset_tolerance) of its support (default 0.1; 0: only when in every one of its graphs, which
    closure already rules out). max_subcircuits: how many are written (default 500). batch: subcircuits
    per write (default 200)."""

    min_weight: float = 0.05
    min_support: int = 2
    min_support_fraction: float = 0.05
    min_specificity: float = 0.6
    min_edges: int = 2
    max_pairs: int = 20_000
    subset_tolerance: float = 0.1
    max_subcircuits: int = 500
    batch: int = 200


@dataclass
class RecurringEdges:
    """Recurring edges as parallel lists: endpoints, graph bitsets, per-graph weights and influences (graph
    ordinal ->); the feature support of their Features (its keys tell Features from Tokens)."""

    graph_ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    graphs: list[int] = field(default_factory=list)  # bit i set: occurs in graph_ids[i]
    weights: list[dict[int, float]] = field(default_factory=list)
    influences: list[dict[int, float]] = field(default_factory=list)
    feature_support: dict[str, int] = field(default_factory=dict)
    start_tokens: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sources)

    def features(self, edge: int) -> list[str]:
        """The Feature endpoints of `edge` (none for a token-to-logit edge)."""
        ends = (self.sources[edge], self.targets[edge])
        return [key for key in ends if key in self.feature_support]

    def joints(self, edge: int) -> list[str]:
        """The nodes through which `edge` connects to others: its Features, and its logit when a Feature
        feeds it (module docstring)."""
        source, target = self.sources[edge], self.targets[edge]
        if source not in self.feature_support:
            return [target] if target in self.feature_support else []
        return [source, target]

    def specific(self, edge: int, support: int, min_specificity: float) -> bool:
        """Whether a subcircuit of `support` graphs stays specific with `edge` in it."""
        return all(support / self.feature_support[f] >= min_specificity for f in self.features(edge))


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
    """The recurring edges (step 1 of the module docstring), checked `batch` candidate pairs per query
    (bounded server memory), each record turned into a bitset as it arrives."""
    out = RecurringEdges()
    ordinal: dict[str, int] = {}
    with driver.session(database=database, default_access_mode=neo4j.READ_ACCESS) as session:
        out.start_tokens = [record["key"] for record in session.run(_START_TOKENS)]
        candidates = session.run(
            load_query("recurring_candidates"), min_support=min_support, start_tokens=out.start_tokens
        )
        pairs = [[record["source"], record["target"]] for record in candidates]
        for start in range(0, len(pairs), max(1, batch)):
            result = session.run(
                load_query("recurring_edges"),
                pairs=pairs[start : start + batch],
                min_weight=min_weight,
                min_support=min_support,
            )
            for record in result:
                bits, weights, influences = 0, {}, {}
                rows = zip(record["graphs"], record["weights"], record["influences"], strict=True)
                for graph, weight, influence in rows:
                    i = ordinal.setdefault(graph, len(ordinal))
                    bits |= 1 << i
                    weights[i], influences[i] = float(weight), float(influence)
                out.sources.append(record["source"])
                out.targets.append(record["target"])
                out.graphs.append(bits)
                out.weights.append(weights)
                out.influences.append(influences)
        keys = sorted(set(out.sources) | set(out.targets))
        for start in range(0, len(keys), max(1, batch)):
            for record in session.run(_FEATURE_SUPPORT, keys=keys[start : start + batch]):
                out.feature_support[record["key"]] = record["graphs"]
    out.graph_ids = list(ordinal)
    return out


def _incident(edges: RecurringEdges) -> dict[str, list[int]]:
    """Joint (a Feature, or a logit fed by one) -> the edges it is a joint of."""
    incident: dict[str, list[int]] = defaultdict(list)
    for e in range(len(edges)):
        for joint in set(edges.joints(e)):
            incident[joint].append(e)
    return incident


def _close(
    seed: Iterable[int],
    graphs: int,
    edges: RecurringEdges,
    incident: dict[str, list[int]],
    min_specificity: float,
) -> Subcircuit:
    """Add edges sharing a joint whose graphs include `graphs` and which keep the subcircuit specific,
    until none is left (support stays the same)."""
    members = set(seed)
    support = graphs.bit_count()
    frontier = {j for e in members for j in edges.joints(e)}
    while frontier:
        grown: set[str] = set()
        for node in frontier:
            for e in incident[node]:
                if (
                    e not in members
                    and graphs & ~edges.graphs[e] == 0
                    and edges.specific(e, support, min_specificity)
                ):
                    members.add(e)
                    grown.update(edges.joints(e))
        frontier = grown
    return Subcircuit(frozenset(members), graphs)


def _uncovered(found: list[Subcircuit], tolerance: float) -> list[Subcircuit]:
    """`found` without the subcircuits that a larger one covers: holds all their edges and occurs in at
    least (1 - tolerance) of their support."""
    holding: dict[int, list[Subcircuit]] = defaultdict(list)  # edge -> the subcircuits holding it
    for sub in found:
        for e in sub.edges:
            holding[e].append(sub)
    kept = []
    for sub in found:
        rarest = min(sub.edges, key=lambda e: len(holding[e]))
        if not any(
            len(other.edges) > len(sub.edges)
            and other.support >= (1.0 - tolerance) * sub.support
            and sub.edges < other.edges
            for other in holding[rarest]
        ):
            kept.append(sub)
    return kept


def mine(
    edges: RecurringEdges,
    *,
    k: int,
    min_edges: int,
    max_pairs: int,
    min_specificity: float,
    subset_tolerance: float = 0.0,
) -> list[Subcircuit]:
    """Closed specific connected subcircuits of support >= k that no larger one covers (steps 2-3 of the
    module docstring; subset_tolerance: default 0.0, only exact covers, which closure never leaves)."""
    incident = _incident(edges)
    seeds: list[tuple[tuple[int, ...], int]] = [((e,), edges.graphs[e]) for e in range(len(edges))]
    pairs: set[tuple[int, int]] = set()
    for joint_edges in incident.values():
        for a, b in combinations(sorted(joint_edges), 2):
            common = edges.graphs[a] & edges.graphs[b]
            if common.bit_count() >= k and common not in (edges.graphs[a], edges.graphs[b]):
                pairs.add((a, b))  # a pair whose graphs equal one edge's is that edge's closure already
    strongest = sorted(pairs, key=lambda p: -(edges.graphs[p[0]] & edges.graphs[p[1]]).bit_count())
    seeds += [((a, b), edges.graphs[a] & edges.graphs[b]) for a, b in strongest[:max_pairs]]
    found: dict[frozenset[int], Subcircuit] = {}
    for seed, graphs in seeds:
        if not all(edges.specific(e, graphs.bit_count(), min_specificity) for e in seed):
            continue
        sub = _close(seed, graphs, edges, incident, min_specificity)
        if len(sub.edges) >= min_edges:
            found.setdefault(sub.edges, sub)
    return _uncovered(list(found.values()), subset_tolerance)


def _occurrences(sub: Subcircuit, edges: RecurringEdges) -> list[dict[str, Any]]:
    graphs = [i for i in range(len(edges.graph_ids)) if sub.graphs >> i & 1]
    return [
        {
            "graph": edges.graph_ids[g],
            "weight": sum(edges.weights[e][g] for e in sub.edges),
            "influence": max(edges.influences[e][g] for e in sub.edges),
        }
        for g in graphs
    ]


def _row(sub: Subcircuit, edges: RecurringEdges, n_graphs: int) -> dict[str, Any]:
    order = sorted(sub.edges, key=lambda e: (edges.sources[e], edges.targets[e]))
    sources = [edges.sources[e] for e in order]
    targets = [edges.targets[e] for e in order]
    occurrences = _occurrences(sub, edges)
    text = "\n".join(f"{s}->{t}" for s, t in zip(sources, targets, strict=True))
    weights = [o["weight"] for o in occurrences]
    total_influence = sum(o["influence"] for o in occurrences)
    widest = max((edges.feature_support[f] for e in sub.edges for f in edges.features(e)), default=0)
    return {
        "key": hashlib.sha1(text.encode()).hexdigest()[:16],
        "support": sub.support,
        "support_fraction": sub.support / n_graphs,
        "specificity": sub.support / widest if widest else 1.0,
        "influence": total_influence / sub.support,
        "total_influence": total_influence,
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
    found = mine(
        edges,
        k=k,
        min_edges=config.min_edges,
        max_pairs=config.max_pairs,
        min_specificity=config.min_specificity,
        subset_tolerance=config.subset_tolerance,
    )
    rows = [_row(sub, edges, n_graphs) for sub in found]
    rows.sort(key=lambda r: (-r["total_influence"], -r["support"], r["key"]))
    rows = rows[: config.max_subcircuits]
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    with driver.session(database=database) as session:
        session.run(_CLEAR).consume()
        for start in range(0, len(rows), max(1, config.batch)):
            session.run(_WRITE, rows=rows[start : start + config.batch], run=STEP).consume()
    result = {
        "k": k,
        "graphs": n_graphs,
        "start_tokens": len(edges.start_tokens),
        "recurring_edges": len(edges),
        "closed_subcircuits": len(found),
        "written": len(rows),
        "top_support": rows[0]["support"] if rows else 0,
    }
    finish_run(driver, STEP, result, database=database)
    return result
