"""circuitbase: attribution graphs for many prompts, in Neo4j."""

__version__ = "0.1.0"
