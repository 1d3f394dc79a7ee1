// The neighbourhood of a feature in the aggregated graph: the Features and Tokens it attributes to
// (direction 'out') and that attribute to it ('in'), through ATTRIBUTES edges seen in >= $min_graphs
// graphs; ranked by the number of graphs, then by the summed |weight|.
//
// :param feature_key => 'tiny-set/1/7'
// :param min_graphs => 1
// :param limit => 25
MATCH (f:Feature {key: $feature_key})-[a:ATTRIBUTES]-(other)
WHERE a.graphs >= $min_graphs
RETURN CASE WHEN startNode(a) = f THEN 'out' ELSE 'in' END AS direction,
       other.key AS neighbour, [l IN labels(other) WHERE l IN ['Feature', 'Token']][0] AS kind,
       a.graphs AS graphs, a.sum AS sum, a.sum_abs AS sum_abs, a.max_abs AS max_abs
ORDER BY graphs DESC, sum_abs DESC, neighbour
LIMIT $limit
