"""Every Cypher read and write of the API: parameterised, batched over keys, bounded in time.

1. `TimedDriver` wraps the Neo4j driver so every query (the API's own and those of the analysis package
   it calls) runs with the transaction timeout; reads go to readers. The API's own reads run as auto-commit
   queries: one round trip, where a managed transaction adds BEGIN and COMMIT (they share the driver's
   bookmarks, so a read still sees the writes before it). They ask for no notifications: the server's
   only ones for these fixed queries name labels or properties a database does not hold yet (no
   `AnalysisRun` before an analysis), which the driver would log on every request.
2. Reads take lists of keys (one round trip for a whole DataLoader batch). Queries of the library
   (`cypher/*.cypher`) that take one key run for many keys at once as a CALL subquery per key.
3. List queries page by keyset (`ORDER BY id`, `WHERE id > $after`), fetching one row more than asked to
   tell whether a next page exists.
4. Batched lookups return few records: the driver's cost is per record (a graph view has thousands of rows),
   so a lookup by key collects what it finds into one list (`rows`), and a lookup of lists per key returns
   one record per key holding that key's list (`key`, `rows`).
5. Rows come back as the driver decodes them (maps, lists, numbers, strings): queries project properties,
   never return nodes, so no per-value conversion is needed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import neo4j

from circuitbase.analysis.queries import load_query, query_params


class TimedDriver:
    """The subset of `neo4j.Driver` the API uses, with a transaction timeout on every query."""

    def __init__(self, driver: neo4j.Driver, *, timeout_s: float) -> None:
        self.driver, self.timeout_s = driver, timeout_s

    def execute_query(
        self, query: str | neo4j.Query, parameters: dict[str, Any] | None = None, **kwargs: Any
    ):
        if not isinstance(query, neo4j.Query):
            query = neo4j.Query(query, timeout=self.timeout_s)
        return self.driver.execute_query(query, parameters, **kwargs)

    def read(self, query: str, parameters: dict[str, Any], *, database: str) -> list[neo4j.Record]:
        """Run a read-only query as an auto-commit transaction (module docstring, step 1)."""
        with self.driver.session(
            database=database,
            default_access_mode=neo4j.READ_ACCESS,
            bookmark_manager=self.driver.execute_query_bookmark_manager,
            notifications_min_severity=neo4j.NotificationMinimumSeverity.OFF,
        ) as session:
            return list(session.run(neo4j.Query(query, timeout=self.timeout_s), parameters))

    def session(self, **kwargs: Any) -> neo4j.Session:
        """A plain session (for the analysis jobs, whose GDS calls may run long)."""
        return self.driver.session(**kwargs)


@dataclass(frozen=True)
class GraphFilter:
    """Graphs (or prompts with a graph) matching every given field; None means any."""

    tag: str | None = None
    dataset: str | None = None
    correct: bool | None = None
    model: str | None = None
    transcoder_set: str | None = None
    feature: str | None = None  # a Feature key the pruned graph keeps an instance of

    def params(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "dataset": self.dataset,
            "correct": self.correct,
            "model": self.model,
            "set": self.transcoder_set,
            "feature": self.feature,
        }


_GRAPH_MATCH = """
($tag IS NULL OR $tag IN p.tags) AND ($dataset IS NULL OR p.dataset = $dataset)
AND ($correct IS NULL OR g.correct = $correct) AND ($model IS NULL OR g.model = $model)
AND ($set IS NULL OR g.transcoder_set = $set)
AND ($feature IS NULL OR EXISTS {
  MATCH (:Feature {key: $feature})<-[:INSTANCE_OF]-(:FeatureNode)-[:IN_GRAPH]->(g) })
"""
_GRAPH_MAP = "g {.*, prompt_text: p.text}"
_GRAPH_FIELDS = f"{_GRAPH_MAP} AS g"
_GRAPHS_PAGE = f"""
MATCH (g:Graph)-[:OF_PROMPT]->(p:Prompt)
WHERE g.complete = true AND ($after IS NULL OR g.id > $after) AND {_GRAPH_MATCH}
RETURN {_GRAPH_FIELDS}
ORDER BY g.id
LIMIT $limit
"""
_GRAPHS_COUNT = f"""
MATCH (g:Graph)-[:OF_PROMPT]->(p:Prompt)
WHERE g.complete = true AND {_GRAPH_MATCH}
RETURN count(g) AS n
"""
_PROMPTS_PAGE = f"""
MATCH (p:Prompt)
WHERE ($after IS NULL OR p.id > $after)
  AND ($tag IS NULL OR $tag IN p.tags) AND ($dataset IS NULL OR p.dataset = $dataset)
  AND ($correct IS NULL AND $model IS NULL AND $set IS NULL AND $feature IS NULL
       OR EXISTS {{ MATCH (g:Graph)-[:OF_PROMPT]->(p) WHERE g.complete = true AND {_GRAPH_MATCH} }})
RETURN p {{.*}} AS p
ORDER BY p.id
LIMIT $limit
"""
_GRAPHS_BY_ID = f"""
UNWIND $keys AS key
MATCH (g:Graph {{id: key}})-[:OF_PROMPT]->(p:Prompt)
WHERE g.complete = true
RETURN collect({_GRAPH_MAP}) AS rows
"""
_GRAPHS_OF_PROMPTS = f"""
UNWIND $keys AS key
CALL (key) {{
  MATCH (g:Graph)-[:OF_PROMPT]->(p:Prompt {{id: key}})
  WHERE g.complete = true
  WITH g, p ORDER BY g.id
  RETURN collect({_GRAPH_MAP}) AS rows
}}
RETURN key, rows
"""
_PROMPTS_BY_ID = "UNWIND $keys AS key MATCH (p:Prompt {id: key}) RETURN collect(p {.*}) AS rows"
_FEATURE_FIELDS = (  # those of the Feature type (not the label's source and time)
    ".key, .set, .layer, .index, .label, .density, .top_contexts, .top_activations, .promoted_tokens, "
    ".community, .pagerank, .betweenness"
)
_FEATURES_BY_KEY = (
    f"UNWIND $keys AS key MATCH (f:Feature {{key: key}}) RETURN collect(f {{{_FEATURE_FIELDS}}}) AS rows"
)
_TOKENS_BY_KEY = "UNWIND $keys AS key MATCH (t:Token {key: key}) RETURN collect(t {.*}) AS rows"
_REFS_BY_KEY = """
UNWIND $keys AS key
OPTIONAL MATCH (f:Feature {key: key})
OPTIONAL MATCH (t:Token {key: key})
WITH key, f, t WHERE f IS NOT NULL OR t IS NOT NULL
RETURN collect(CASE WHEN f IS NOT NULL
  THEN {key: key, kind: 'Feature', layer: f.layer, index: f.index, label: f.label,
        promoted_tokens: f.promoted_tokens}
  ELSE {key: key, kind: 'Token', text: t.text} END) AS rows
"""
_KEPT = "(n.influence >= $min_influence OR n:TokenNode OR n:LogitNode)"
_NODES = f"""
UNWIND $keys AS key
CALL (key) {{
  MATCH (n:GraphNode {{graph: key}})
  WHERE {_KEPT}
  WITH n ORDER BY n.idx
  RETURN collect(n {{.node, .layer, .position, .influence, .activation, .feature, .token_id, .probability,
                     kind: [l IN labels(n) WHERE l <> 'GraphNode'][0]}}) AS rows
}}
RETURN key, rows
"""
_EDGES = """
UNWIND $keys AS key
CALL (key) {{
  MATCH (a:GraphNode {{graph: key}})-[e:EDGE]->(b)
  WHERE abs(e.weight) >= $min_abs_weight {nodes}
  WITH a.node AS source, b.node AS target, e.weight AS weight
  ORDER BY abs(weight) DESC, source, target
  LIMIT $top_k
  RETURN collect({{source: source, target: target, weight: weight}}) AS rows
}}
RETURN key, rows
"""
_EDGE_NODES = """
    AND (a.influence >= $min_influence OR a:TokenNode OR a:LogitNode)
    AND (b.influence >= $min_influence OR b:TokenNode OR b:LogitNode)"""
_SUBCIRCUITS_PAGE = """
MATCH (s:Subcircuit)
WHERE s.support >= $min_support AND ($after IS NULL OR s.rank > $after)
RETURN s {.*} AS s
ORDER BY s.rank
LIMIT $limit
"""
_SUBCIRCUITS_BY_KEY = "UNWIND $keys AS key MATCH (s:Subcircuit {key: key}) RETURN collect(s {.*}) AS rows"
_OCCURRENCES = """
UNWIND $keys AS key
CALL (key) {
  MATCH (:Subcircuit {key: key})-[o:OCCURS_IN]->(g:Graph)
  WITH g.id AS graph, o.weight AS weight, o.influence AS influence, o.causal_drop AS causal_drop,
       o.causal_logit_drop AS causal_logit_drop
  ORDER BY abs(weight) DESC, graph
  LIMIT $limit
  RETURN collect({graph: graph, weight: weight, influence: influence, causal_drop: causal_drop,
                  causal_logit_drop: causal_logit_drop}) AS rows
}
RETURN key, rows
"""
_SUBCIRCUITS_OF_GRAPHS = """
UNWIND $keys AS key
CALL (key) {
  MATCH (s:Subcircuit)-[o:OCCURS_IN]->(:Graph {id: key})
  WITH s, o ORDER BY s.rank
  RETURN collect({s: s {.*}, weight: o.weight, influence: o.influence, causal_drop: o.causal_drop,
                  causal_logit_drop: o.causal_logit_drop}) AS rows
}
RETURN key, rows
"""
# the nodes `analysis/causal.py` ablates for one occurrence (its step 1): every kept FeatureNode of the
# graph that is an instance of one of the subcircuit's member Features, at any position
_MEMBER_NODES = """
UNWIND $keys AS key
CALL (key) {
  MATCH (n:GraphNode:FeatureNode {graph: key[1]})-[:INSTANCE_OF]->(f:Feature)
        <-[:HAS_MEMBER]-(:Subcircuit {key: key[0]})
  WITH n, f ORDER BY n.layer, n.position, n.feature
  RETURN collect(n {.node, .layer, .position, .feature, .influence, .activation, feature_key: f.key}) AS rows
}
RETURN key, rows
"""
_SUPERNODES = """
MATCH (s:Supernode)
RETURN s {.*} AS s
ORDER BY s.size DESC, s.key
LIMIT $limit
"""
_SUPERNODES_OF = """
UNWIND $keys AS key
CALL (key) {
  MATCH (s:Supernode)-[:HAS_MEMBER]->(:Feature {key: key})
  WITH s ORDER BY s.key
  RETURN collect(s {.*}) AS rows
}
RETURN key, rows
"""
_MEMBERS = """
UNWIND $keys AS key
CALL (key) {
  MATCH (:Supernode {key: key})-[:HAS_MEMBER]->(m)
  WITH m.key AS member ORDER BY member
  RETURN collect(member) AS rows
}
RETURN key, rows
"""
_FEATURE_PRESENCE = """
UNWIND $keys AS key
CALL (key) {
  MATCH (n:FeatureNode {graph: key})-[:INSTANCE_OF]->(f:Feature)
  WITH f.key AS feature, max(n.influence) AS influence, max(n.activation) AS activation
  RETURN collect({feature: feature, influence: influence, activation: activation}) AS rows
}
RETURN key, rows
"""
_STATE = """
CALL () { MATCH (g:Graph) RETURN count(g) AS graphs }
CALL () { MATCH (n:GraphNode) RETURN count(n) AS nodes }
CALL () { MATCH ()-[e:EDGE]->() RETURN count(e) AS edges }
CALL () { MATCH (j:IngestJob) WHERE j.status <> 'running' RETURN count(j) AS jobs }
CALL () { MATCH (w:ApiRevision) RETURN sum(w.n) AS writes }
CALL () {
  MATCH (r:AnalysisRun)
  WITH r ORDER BY r.id
  RETURN collect([r.id, r.status, toString(r.started), toString(r.finished)]) AS runs
}
RETURN graphs, nodes, edges, jobs, writes, runs
"""
# counts the API's writes of labels and supernodes (in the writing transaction) for the state token; a
# concurrent first MERGE may make two such nodes, and the token sums them
_BUMP_REVISION = "CALL () { MERGE (w:ApiRevision {id: 'api'}) SET w.n = coalesce(w.n, 0) + 1 }"
_MODELS = """
MATCH (m:Model)
OPTIONAL MATCH (s:TranscoderSet)-[:FOR_MODEL]->(m)
WITH m, collect(s.name) AS sets
RETURN m.name AS name, sets
ORDER BY name
"""
_SETS = """
MATCH (s:TranscoderSet)
OPTIONAL MATCH (s)-[:FOR_MODEL]->(m:Model)
RETURN s.name AS name, m.name AS model, COUNT { (:Feature)-[:IN_SET]->(s) } AS features
ORDER BY name
"""
_INGEST_JOBS = """
MATCH (j:IngestJob)
WHERE $id IS NULL OR j.id = $id
RETURN j {.*, started: toString(j.started), finished: toString(j.finished)} AS j
ORDER BY j.started DESC, j.id
LIMIT $limit
"""
_INGEST_JOB_BY_MARKER = """
MATCH (j:IngestJob)
WHERE j.parameters CONTAINS $marker
RETURN j {.*, started: toString(j.started), finished: toString(j.finished)} AS j
ORDER BY j.started DESC
LIMIT 1
"""
_ANALYSIS_RUNS = """
MATCH (r:AnalysisRun)
RETURN r {.*, started: toString(r.started), finished: toString(r.finished)} AS r
ORDER BY r.id
"""
_LABEL = f"""
MATCH (f:Feature {{key: $key}})
SET f.label = $label, f.label_source = $source, f.labelled = datetime()
WITH f
{_BUMP_REVISION}
RETURN f {{.*}} AS f
"""
_MISSING_FEATURES = (
    "UNWIND $keys AS key OPTIONAL MATCH (f:Feature {key: key}) WITH key, f WHERE f IS NULL RETURN key"
)
_DEFINE_SUPERNODE = f"""
MERGE (s:Supernode {{key: $key}})
SET s.name = $name, s.description = $description, s.algorithm = 'manual', s.size = size($features),
    s.features = size($features), s.defined = datetime()
WITH s
OPTIONAL MATCH (s)-[old:HAS_MEMBER]->()
DELETE old
WITH DISTINCT s
UNWIND $features AS key
MATCH (f:Feature {{key: key}})
CREATE (s)-[:HAS_MEMBER]->(f)
WITH DISTINCT s
{_BUMP_REVISION}
RETURN s {{.*}} AS s
"""


class Repository:
    """The API's queries against one database (see the module docstring)."""

    def __init__(self, driver: TimedDriver, *, database: str = "neo4j") -> None:
        self.driver, self.database = driver, database

    def read(self, query: str, **params: Any) -> list[dict[str, Any]]:
        records = self.driver.read(query, params, database=self.database)
        return [dict(zip(record.keys(), record.values(), strict=True)) for record in records]

    def write(self, query: str, **params: Any) -> list[dict[str, Any]]:
        records, _, _ = self.driver.execute_query(query, params, database_=self.database)
        return [dict(zip(record.keys(), record.values(), strict=True)) for record in records]

    def by_key(self, query: str, keys: Sequence[str], *, field: str = "key") -> dict[str, dict]:
        """Rows of a lookup by key (module docstring, step 4) by their `field`."""
        return {row[field]: row for row in self.read(query, keys=list(keys))[0]["rows"]}

    def grouped(self, query: str, keys: Sequence[Any], **params: Any) -> dict[Any, list]:
        """Lists of a lookup of lists per key (module docstring, step 4); a key without rows gets []. A
        tuple key goes to Neo4j as a list and comes back as a tuple."""
        out: dict[Any, list] = {k: [] for k in keys}
        out.update(
            (tuple(r["key"]) if isinstance(r["key"], list) else r["key"], r["rows"])
            for r in self.read(query, keys=list(keys), **params)
        )
        return out

    def library_batch(self, name: str, key_param: str, keys: Sequence[str], **params: Any) -> list[dict]:
        """Run library query `name` (one `$key_param`) for every key in one round trip; rows gain `_key`."""
        declared = set(query_params(name))
        if declared != {key_param, *params}:
            raise ValueError(f"query {name!r} takes {sorted(declared)}, got {sorted({key_param, *params})}")
        body = re.sub(rf"\${key_param}\b", "_key", load_query(name))
        query = f"UNWIND $_keys AS _key\nCALL (_key) {{\n{body}\n}}\nRETURN *"
        return self.read(query, _keys=list(keys), **params)

    # ---- lists ----
    def graphs_page(self, where: GraphFilter, *, after: str | None, limit: int) -> list[dict]:
        return [r["g"] for r in self.read(_GRAPHS_PAGE, after=after, limit=limit, **where.params())]

    def graphs_count(self, where: GraphFilter) -> int:
        return int(self.read(_GRAPHS_COUNT, **where.params())[0]["n"])

    def prompts_page(self, where: GraphFilter, *, after: str | None, limit: int) -> list[dict]:
        return [r["p"] for r in self.read(_PROMPTS_PAGE, after=after, limit=limit, **where.params())]

    def subcircuits_page(self, *, min_support: int, after: int | None, limit: int) -> list[dict]:
        return [
            r["s"] for r in self.read(_SUBCIRCUITS_PAGE, min_support=min_support, after=after, limit=limit)
        ]

    def supernodes(self, *, limit: int) -> list[dict]:
        return [r["s"] for r in self.read(_SUPERNODES, limit=limit)]

    def models(self) -> list[dict]:
        return self.read(_MODELS)

    def transcoder_sets(self) -> list[dict]:
        return self.read(_SETS)

    def ingest_jobs(self, *, job_id: str | None, limit: int) -> list[dict]:
        return [r["j"] for r in self.read(_INGEST_JOBS, id=job_id, limit=limit)]

    def ingest_job_by_marker(self, marker: str) -> dict | None:
        rows = self.read(_INGEST_JOB_BY_MARKER, marker=marker)
        return rows[0]["j"] if rows else None

    def analysis_runs(self) -> list[dict]:
        return [r["r"] for r in self.read(_ANALYSIS_RUNS)]

    # ---- batched lookups (DataLoaders) ----
    def graphs_by_id(self, ids: Sequence[str]) -> dict[str, dict]:
        return self.by_key(_GRAPHS_BY_ID, ids, field="id")

    def graphs_of_prompts(self, ids: Sequence[str]) -> dict[str, list[dict]]:
        return self.grouped(_GRAPHS_OF_PROMPTS, ids)

    def prompts_by_id(self, ids: Sequence[str]) -> dict[str, dict]:
        return self.by_key(_PROMPTS_BY_ID, ids, field="id")

    def features_by_key(self, keys: Sequence[str]) -> dict[str, dict]:
        return self.by_key(_FEATURES_BY_KEY, keys)

    def tokens_by_key(self, keys: Sequence[str]) -> dict[str, dict]:
        return self.by_key(_TOKENS_BY_KEY, keys)

    def refs_by_key(self, keys: Sequence[str]) -> dict[str, dict]:
        """Features and Tokens by key, whichever each key is: `kind` ('Feature' or 'Token') and what
        `circuitbase.api.words` reads (layer, index, label, promoted_tokens; text)."""
        return self.by_key(_REFS_BY_KEY, keys)

    def subcircuits_by_key(self, keys: Sequence[str]) -> dict[str, dict]:
        return self.by_key(_SUBCIRCUITS_BY_KEY, keys)

    def graph_nodes(self, ids: Sequence[str], *, min_influence: float) -> dict[str, list[dict]]:
        """Kept nodes per graph, by `idx`; `kind` is the node's kind label."""
        return self.grouped(_NODES, ids, min_influence=min_influence)

    def graph_edges(
        self, ids: Sequence[str], *, min_influence: float, min_abs_weight: float, top_k: int
    ) -> dict[str, list[dict]]:
        """The `top_k` strongest edges (source, target, weight) per graph between kept nodes."""
        # influence is >= 0 by construction, so a bound <= 0 keeps every node: skip the per-edge node checks
        query = _EDGES.format(nodes=_EDGE_NODES if min_influence > 0 else "")
        return self.grouped(
            query, ids, min_influence=min_influence, min_abs_weight=min_abs_weight, top_k=top_k
        )

    def graph_view(
        self, graph_id: str, *, min_influence: float, min_abs_weight: float, top_k: int
    ) -> dict[str, Any] | None:
        """One graph at a pruning level as the dashboard draws it (`cypher/graph_view.cypher`: nodes with
        their feature's or token's words, edges as node idx), in one query; None for a graph that is not
        stored complete."""
        rows = self.read(
            load_query("graph_view"),
            graph_id=graph_id,
            min_influence=min_influence,
            min_abs_weight=min_abs_weight,
            top_k=top_k,
        )
        return rows[0] if rows else None

    def occurrences(self, keys: Sequence[str], *, limit: int) -> dict[str, list[dict]]:
        return self.grouped(_OCCURRENCES, keys, limit=limit)

    def subcircuits_of_graphs(self, ids: Sequence[str]) -> dict[str, list[dict]]:
        return self.grouped(_SUBCIRCUITS_OF_GRAPHS, ids)

    def member_nodes(self, occurrences: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[dict]]:
        """Per (subcircuit key, graph id): the graph's kept feature nodes that are instances of the
        subcircuit's member Features, what the causal step ablates there (`analysis/causal.py`, step 1),
        by layer, position and feature index; `feature` is the index, `feature_key` the Feature."""
        return self.grouped(_MEMBER_NODES, occurrences)

    def supernodes_of(self, keys: Sequence[str]) -> dict[str, list[dict]]:
        """The supernodes each Feature (by key) belongs to (an index seek, not a scan of all members)."""
        return self.grouped(_SUPERNODES_OF, keys)

    def supernode_members(self, keys: Sequence[str]) -> dict[str, list[str]]:
        return self.grouped(_MEMBERS, keys)

    def feature_presence(self, graph_ids: Sequence[str]) -> dict[str, list[dict]]:
        """Per graph: (feature, largest influence, largest activation) of every feature it keeps."""
        return self.grouped(_FEATURE_PRESENCE, graph_ids)

    # ---- writes ----
    def label_feature(self, key: str, label: str, *, source: str) -> dict | None:
        rows = self.write(_LABEL, key=key, label=label, source=source)
        return rows[0]["f"] if rows else None

    def missing_features(self, keys: Sequence[str]) -> list[str]:
        return [r["key"] for r in self.read(_MISSING_FEATURES, keys=list(keys))]

    def define_supernode(self, *, key: str, name: str, description: str, features: Sequence[str]) -> dict:
        rows = self.write(
            _DEFINE_SUPERNODE, key=key, name=name, description=description, features=list(features)
        )
        return rows[0]["s"]

    def state_token(self) -> tuple | None:
        """What cached results (`circuitbase.api.cache`) depend on: the numbers of graphs, graph nodes and
        graph edges (from the count store: no scan), of ingest jobs no longer running, of the API's writes
        of labels and supernodes (`ApiRevision`, bumped in the writing transaction) and each AnalysisRun's
        status and times; None while a step runs. Ingest adds each graph in one transaction and writes
        feature labels before it finishes its job, and each analysis step marks its run running before it
        rewrites its results and finished after, so all of them change the token."""
        row = self.read(_STATE)[0]
        if any(status == "running" for _, status, _, _ in row["runs"]):
            return None
        counts = (row["graphs"], row["nodes"], row["edges"], row["jobs"], row["writes"])
        return *counts, tuple(tuple(run) for run in row["runs"])

    def ping(self) -> bool:
        return self.read("RETURN 1 AS ok")[0]["ok"] == 1
