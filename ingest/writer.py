"""Write one graph's rows to Neo4j in ONE transaction, so the load is atomic, idempotent and resumable.

1. Shared nodes first, in their own short transaction: Model, TranscoderSet, Feature, Token (MERGE on
   keys, each Feature `IN_SET` its set). Every graph touches the TranscoderSet, and creating a
   relationship on it locks it until commit, so this would serialise concurrent writers for a whole
   graph's transaction if it were part of it. Shared nodes mean nothing without a graph that uses them,
   so one left by a crash before the graph's commit is harmless and is MERGEd again by the re-run.
2. Claim: MERGE the `Graph {id}` node (its uniqueness lock serialises concurrent writers of one graph).
   If it is already `complete`, nothing is written (the job counts it as skipped).
3. Otherwise clear anything of that graph left from an earlier non-atomic attempt, then write the
   Prompt, the graph's own nodes and `EDGE`s (CREATE: none can exist), and add the graph's
   contribution to the aggregated `ATTRIBUTES` edges, one statement per pair of endpoint labels: seek
   both endpoints by key, seek the edge in the unique index on `pair` (a hash of both keys; never an
   expansion of a popular Feature's thousands of edges), update it if it joins those endpoints, else
   create it. The seek locks the index entry of a missing pair until commit, so a concurrent writer of
   the same pair waits and then updates it, or deadlocks and is retried: never a duplicate. A hash
   collision (endpoints differ) is not matched; the create then fails on the constraint, loudly. Every
   statement is a seek or a create per row, so a graph's write costs the same however many graphs are
   already loaded (tests/test_ingest_plans.py checks the plans).
4. Mark the graph `complete` and `aggregated` and bump the job's counter, then commit. A crash before
   the commit leaves no trace of the graph, so a re-run redoes exactly the graphs that are not
   complete, and the aggregate never counts a graph twice. Readers never see a half-written graph.

Every statement is a parameterised `UNWIND` (lists as parameters, a few statements per graph); labels
in the text come only from the fixed kinds below, never from input values.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import neo4j

from circuitbase.ingest.model import NODE_KINDS, REF_LABELS, GraphRows

_CLAIM = """
MERGE (g:Graph {id: $id})
ON CREATE SET g.complete = false
RETURN g.complete AS complete
"""
_SKIPPED = "MATCH (j:IngestJob {id: $job}) SET j.graphs_skipped = coalesce(j.graphs_skipped, 0) + 1"
_CLEAR = """
MATCH (n:GraphNode {graph: $id})
DETACH DELETE n
WITH count(*) AS cleared
MATCH (g:Graph {id: $id})-[r:OF_PROMPT]->()
DELETE r
"""
_COMPLETE = "OPTIONAL MATCH (g:Graph {id: $id}) RETURN g.complete AS complete"
_SHARED = """
MERGE (m:Model {name: $model})
MERGE (s:TranscoderSet {name: $set})
MERGE (s)-[:FOR_MODEL]->(m)
"""
_HEAD = """
MATCH (g:Graph {id: $graph.id})
MERGE (p:Prompt {id: $prompt.id})
SET p += $prompt, g += $graph
CREATE (g)-[:OF_PROMPT]->(p)
"""
_FEATURES = """
MATCH (s:TranscoderSet {name: $set})
UNWIND $rows AS r
MERGE (f:Feature {key: r.key})
ON CREATE SET f.set = $set, f.layer = r.layer, f.index = r.index
MERGE (f)-[:IN_SET]->(s)
"""
_TOKENS = """
UNWIND $rows AS r
MERGE (t:Token {key: r.key})
ON CREATE SET t.model = $model, t.id = r.id, t.text = r.text
"""
_NODES = """
MATCH (g:Graph {{id: $graph}})
UNWIND $rows AS r
CREATE (n:GraphNode:{kind})
SET n = r.props, n.graph = $graph
CREATE (n)-[:IN_GRAPH]->(g)
WITH n, r WHERE r.ref <> ''
MATCH (x:{ref} {{key: r.ref}})
CREATE (n)-[:INSTANCE_OF]->(x)
"""
_EDGES = """
MATCH (n:GraphNode {graph: $graph})
WITH n ORDER BY n.idx
WITH collect(n) AS ns
UNWIND range(0, size($src) - 1) AS i
WITH ns[$src[i]] AS a, ns[$tgt[i]] AS b, $w[i] AS w
CREATE (a)-[:EDGE {weight: w}]->(b)
"""
_AGGREGATE = """
UNWIND $rows AS r
MATCH (a:{source} {{key: r[0]}})
MATCH (b:{target} {{key: r[1]}})
OPTIONAL MATCH (a)-[e:ATTRIBUTES {{pair: r[6]}}]->(b) USING INDEX SEEK e:ATTRIBUTES(pair)
SET e.graphs = e.graphs + 1, e.edges = e.edges + r[2], e.sum = e.sum + r[3], e.sum_abs = e.sum_abs + r[4],
    e.max_abs = CASE WHEN r[5] > e.max_abs THEN r[5] ELSE e.max_abs END
WITH a, b, r WHERE e IS NULL
CREATE (a)-[:ATTRIBUTES {{pair: r[6], graphs: 1, edges: r[2], sum: 0.0 + r[3], sum_abs: 0.0 + r[4],
    max_abs: CASE WHEN r[5] > 0.0 THEN r[5] ELSE 0.0 END}}]->(b)
"""
_FINISH = """
MATCH (g:Graph {id: $id})
SET g.complete = true, g.aggregated = true
WITH g
OPTIONAL MATCH (j:IngestJob {id: $job})
SET j.graphs_loaded = coalesce(j.graphs_loaded, 0) + 1
"""
_REF_OF_KIND = {"FeatureNode": "Feature", "ErrorNode": "Feature", "TokenNode": "Token", "LogitNode": "Token"}


def pair_key(source: str, target: str) -> int:
    """The `pair` property of the ATTRIBUTES edge from global key `source` to `target`: its index key,
    a signed 64-bit BLAKE2b hash of both keys (a long, so the edge and its index entry stay small)."""
    digest = hashlib.blake2b(f"{source}\x00{target}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class WriterConfig:
    """`edge_batch`: edges per UNWIND statement inside the graph's transaction (default 20,000)."""

    edge_batch: int = 20_000


@dataclass(frozen=True)
class WriteResult:
    """What one graph's write did; `loaded` is False when the graph was already complete."""

    graph_id: str
    loaded: bool
    nodes_created: int = 0
    relationships_created: int = 0

    @property
    def rows(self) -> int:
        return self.nodes_created + self.relationships_created


@dataclass(frozen=True)
class Statement:
    """One parameterised Cypher statement of a graph's write; `name` says which step it is."""

    name: str
    text: str
    params: dict[str, Any]


def _by_key(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in key order: concurrent writers then lock shared nodes in one order (fewer deadlocks)."""
    return sorted(rows, key=lambda row: row["key"])


def claim_statement(rows: GraphRows) -> Statement:
    """The statement that claims the graph (returns `complete`: True when it is already loaded)."""
    return Statement("claim", _CLAIM, {"id": rows.id})


def shared_statements(rows: GraphRows) -> list[Statement]:
    """The statements that write the shared nodes a graph uses, in order (their own transaction)."""
    return [
        Statement("shared", _SHARED, {"model": rows.model, "set": rows.transcoder_set}),
        Statement("features", _FEATURES, {"rows": _by_key(rows.features), "set": rows.transcoder_set}),
        Statement("tokens", _TOKENS, {"rows": _by_key(rows.tokens), "model": rows.model}),
    ]


def write_statements(
    rows: GraphRows, *, job: str = "", config: WriterConfig | None = None
) -> list[Statement]:
    """The statements that write a claimed graph, in order (`job`: the IngestJob to count it under)."""
    config = config or WriterConfig()
    out = [
        Statement("clear", _CLEAR, {"id": rows.id}),
        Statement("head", _HEAD, {"graph": rows.graph, "prompt": rows.prompt}),
    ]
    for kind in NODE_KINDS:
        if rows.nodes.get(kind):
            text = _NODES.format(kind=kind, ref=_REF_OF_KIND[kind])
            out.append(Statement(f"nodes {kind}", text, {"rows": rows.nodes[kind], "graph": rows.id}))
    step = max(1, config.edge_batch)
    for start in range(0, rows.n_edges, step):
        stop = start + step
        edges = {
            "src": rows.edge_src[start:stop],
            "tgt": rows.edge_tgt[start:stop],
            "w": rows.edge_weight[start:stop],
        }
        out.append(Statement("edges", _EDGES, {"graph": rows.id, **edges}))
    for (source, target), cols in rows.aggregate.items():
        if source not in REF_LABELS or target not in REF_LABELS:
            raise ValueError(f"aggregate endpoint labels must be in {REF_LABELS}, got {(source, target)}")
        table = zip(cols["s"], cols["t"], cols["n"], cols["sum"], cols["abs"], cols["max"], strict=True)
        table = sorted([*row, pair_key(row[0], row[1])] for row in table)
        text = _AGGREGATE.format(source=source, target=target)
        out.append(Statement(f"aggregate {source}->{target}", text, {"rows": table}))
    out.append(Statement("finish", _FINISH, {"id": rows.id, "job": job}))
    return out


def _run_all(tx: neo4j.ManagedTransaction, statements: list[Statement]) -> tuple[int, int]:
    """Run `statements` in order; (nodes, relationships) they created."""
    nodes = relationships = 0
    for statement in statements:
        counters = tx.run(statement.text, statement.params).consume().counters
        nodes += counters.nodes_created
        relationships += counters.relationships_created
    return nodes, relationships


def _shared_tx(tx: neo4j.ManagedTransaction, rows: GraphRows) -> tuple[int, int] | None:
    """Write the shared nodes of a graph that is not complete yet; None when it is (nothing written)."""
    record = tx.run(_COMPLETE, id=rows.id).single()
    if record is not None and record["complete"]:
        return None
    return _run_all(tx, shared_statements(rows))


def _write_tx(tx: neo4j.ManagedTransaction, rows: GraphRows, job: str, config: WriterConfig) -> WriteResult:
    claim = claim_statement(rows)
    result = tx.run(claim.text, claim.params)
    record = result.single()
    if record is not None and record["complete"]:
        tx.run(_SKIPPED, job=job).consume()
        return WriteResult(rows.id, loaded=False)
    claimed = result.consume().counters.nodes_created  # the Graph node, when this claim made it
    nodes, relationships = _run_all(tx, write_statements(rows, job=job, config=config))
    return WriteResult(
        rows.id, loaded=True, nodes_created=claimed + nodes, relationships_created=relationships
    )


def write_graph(
    driver: neo4j.Driver,
    rows: GraphRows,
    *,
    job: str = "",
    database: str = "neo4j",
    config: WriterConfig | None = None,
) -> WriteResult:
    """Load one graph atomically (see the module docstring); `job` is the IngestJob id to count it under."""
    config = config or WriterConfig()
    with driver.session(database=database) as session:
        shared = session.execute_write(_shared_tx, rows)
        result = session.execute_write(_write_tx, rows, job, config)
    if shared is None or not result.loaded:
        return result
    return dataclasses.replace(
        result,
        nodes_created=result.nodes_created + shared[0],
        relationships_created=result.relationships_created + shared[1],
    )


def complete_graph_ids(driver: neo4j.Driver, *, database: str = "neo4j") -> set[str]:
    """Ids of the graphs already loaded completely (what a resumed job skips without reading files)."""
    records, _, _ = driver.execute_query(
        "MATCH (g:Graph) WHERE g.complete RETURN g.id AS id",
        database_=database,
        routing_=neo4j.RoutingControl.READ,
    )
    return {record["id"] for record in records}
