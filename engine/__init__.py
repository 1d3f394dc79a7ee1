"""circuitbase.engine"""
