// The recurring subcircuits (`circuitbase analyze --step subcircuits`) a feature is a member of, best
// ranked first, with every property of each (key, rank, support, influence, sources -> targets, ...).
//
// :param feature_key => 'tiny-set/1/7'
// :param limit => 25
MATCH (s:Subcircuit)-[:HAS_MEMBER]->(:Feature {key: $feature_key})
RETURN s {.*} AS subcircuit
ORDER BY s.rank
LIMIT $limit
