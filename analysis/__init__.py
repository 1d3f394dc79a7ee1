"""circuitbase.analysis: recurring mechanisms across many attribution graphs (Cypher + Neo4j GDS)."""
