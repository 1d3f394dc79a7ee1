// circuitbase graph schema. Every statement must be idempotent (IF NOT EXISTS); statements end with ';'.
// Applied by `circuitbase db init` (circuitbase.ingest.schema.apply_schema).

CREATE CONSTRAINT model_name IF NOT EXISTS
FOR (m:Model) REQUIRE m.name IS UNIQUE;

CREATE CONSTRAINT ingest_job_id IF NOT EXISTS
FOR (j:IngestJob) REQUIRE j.id IS UNIQUE;

// ---- ingest (circuitbase.ingest): keys of the shared and per-graph nodes (see cypher/README.md) ----
CREATE CONSTRAINT transcoder_set_name IF NOT EXISTS
FOR (s:TranscoderSet) REQUIRE s.name IS UNIQUE;

CREATE CONSTRAINT feature_key IF NOT EXISTS
FOR (f:Feature) REQUIRE f.key IS UNIQUE;

CREATE CONSTRAINT token_key IF NOT EXISTS
FOR (t:Token) REQUIRE t.key IS UNIQUE;

CREATE CONSTRAINT prompt_id IF NOT EXISTS
FOR (p:Prompt) REQUIRE p.id IS UNIQUE;

CREATE CONSTRAINT graph_id IF NOT EXISTS
FOR (g:Graph) REQUIRE g.id IS UNIQUE;

CREATE CONSTRAINT graph_node_key IF NOT EXISTS
FOR (n:GraphNode) REQUIRE (n.graph, n.node) IS UNIQUE;

CREATE INDEX graph_node_graph IF NOT EXISTS
FOR (n:GraphNode) ON (n.graph);

CREATE INDEX graph_complete IF NOT EXISTS
FOR (g:Graph) ON (g.complete);

CREATE INDEX feature_layer IF NOT EXISTS
FOR (f:Feature) ON (f.set, f.layer);

// the aggregated edge's key (a 64-bit hash of its endpoints' keys): the writer finds an edge by an index
// seek instead of expanding a popular Feature's ATTRIBUTES, and the constraint forbids a duplicate edge
CREATE CONSTRAINT attributes_pair IF NOT EXISTS
FOR ()-[e:ATTRIBUTES]-() REQUIRE e.pair IS UNIQUE;

// aggregated edges seen in >= k graphs (recurring-subcircuit candidates, the analysis projections) are found
// by a range seek instead of expanding every node's ATTRIBUTES
CREATE INDEX attributes_graphs IF NOT EXISTS
FOR ()-[e:ATTRIBUTES]-() ON (e.graphs);

// ---- analysis (circuitbase.analysis): results of `circuitbase analyze` (see cypher/README.md) ----
CREATE CONSTRAINT analysis_run_id IF NOT EXISTS
FOR (r:AnalysisRun) REQUIRE r.id IS UNIQUE;

CREATE CONSTRAINT subcircuit_key IF NOT EXISTS
FOR (s:Subcircuit) REQUIRE s.key IS UNIQUE;

CREATE CONSTRAINT supernode_key IF NOT EXISTS
FOR (s:Supernode) REQUIRE s.key IS UNIQUE;

// ---- api (circuitbase.api): API keys, stored hashed ----
CREATE CONSTRAINT api_key_id IF NOT EXISTS
FOR (k:ApiKey) REQUIRE k.id IS UNIQUE;
