// Features directly driven by a given input token across complete graphs.
// Counts the graphs where a token node of $token_key has an EDGE into a feature instance, with the summed
// and mean weight of those edges; ranked by the number of graphs, then by the total weight.
//
// :param token_key => 'tiny/5'
// :param min_graphs => 1
// :param limit => 25
MATCH (:Token {key: $token_key})<-[:INSTANCE_OF]-(t:TokenNode)-[:IN_GRAPH]->(g:Graph)
WHERE g.complete = true
MATCH (t)-[e:EDGE]->(n:FeatureNode)
MATCH (n)-[:INSTANCE_OF]->(f:Feature)
WITH f, g, sum(e.weight) AS weight
WITH f, count(g) AS graphs, sum(weight) AS total_weight, avg(weight) AS mean_weight
WHERE graphs >= $min_graphs
RETURN f.key AS feature, f.layer AS layer, f.index AS index, graphs, total_weight, mean_weight
ORDER BY graphs DESC, total_weight DESC, feature
LIMIT $limit
