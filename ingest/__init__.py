"""circuitbase.ingest"""
