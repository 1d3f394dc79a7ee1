"""circuitbase.cypher"""
