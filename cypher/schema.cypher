// circuitbase graph schema. Every statement must be idempotent (IF NOT EXISTS); statements end with ';'.
// Applied by `circuitbase db init` (circuitbase.ingest.schema.apply_schema).

CREATE CONSTRAINT model_name IF NOT EXISTS
FOR (m:Model) REQUIRE m.name IS UNIQUE;

CREATE CONSTRAINT ingest_job_id IF NOT EXISTS
FOR (j:IngestJob) REQUIRE j.id IS UNIQUE;
