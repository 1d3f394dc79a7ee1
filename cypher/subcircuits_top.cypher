// The top-ranked recurring subcircuits written by `circuitbase analyze --step subcircuits`, with their
// edges (parallel lists `sources` -> `targets` of Feature/Token keys), support and influence, and the
// causal support of `--step causal` (null where not measured) with the occurrences it was measured on.
//
// :param limit => 20
MATCH (s:Subcircuit)
RETURN s.key AS key, s.rank AS rank, s.support AS support, s.support_fraction AS support_fraction,
       s.influence AS influence, s.weight AS weight, s.sources AS sources, s.targets AS targets,
       s.causal_support AS causal_support, s.causal_occurrences AS causal_occurrences
ORDER BY s.rank
LIMIT $limit
