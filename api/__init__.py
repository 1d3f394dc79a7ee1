"""circuitbase.api"""
