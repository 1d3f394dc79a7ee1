// The graphs most similar to one graph, by the SIMILAR edges `circuitbase analyze --step similarity`
// writes (Jaccard similarity of the sets of features their pruned graphs use).
//
// :param graph_id => 'tiny-set:p0'
// :param limit => 10
MATCH (g:Graph {id: $graph_id})-[s:SIMILAR]->(other:Graph)-[:OF_PROMPT]->(p:Prompt)
RETURN other.id AS graph, p.text AS text, s.score AS score
ORDER BY score DESC, graph
LIMIT $limit
