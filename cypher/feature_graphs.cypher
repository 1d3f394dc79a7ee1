// The complete graphs in which a feature is active and influential, most influential first.
// A feature is "in" a graph when the pruned graph keeps one of its instances (any position); its
// influence there is the largest influence of its instances, its activation the largest activation.
//
// :param feature_key => 'tiny-set/1/7'
// :param min_influence => 0.0
// :param limit => 25
MATCH (f:Feature {key: $feature_key})<-[:INSTANCE_OF]-(n:FeatureNode)-[:IN_GRAPH]->(g:Graph)
WHERE g.complete = true
WITH f, g, max(n.influence) AS influence, max(n.activation) AS activation, count(n) AS positions
WHERE influence >= $min_influence
MATCH (g)-[:OF_PROMPT]->(p:Prompt)
RETURN g.id AS graph, p.id AS prompt, p.text AS text, g.correct AS correct,
       influence, activation, positions
ORDER BY influence DESC, graph
LIMIT $limit
