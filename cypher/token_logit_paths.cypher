// The strongest paths from an input token to an output logit, inside each complete graph (or one graph).
// A path's effect is the product of its edge weights (direct effects compose linearly in an attribution
// graph); only edges with |weight| >= $min_weight are followed and paths have at most 4 edges.
// Returns the $limit paths of largest |effect| with their node ids and the global keys along them.
//
// :param token_key => 'tiny/5'
// :param logit_key => 'tiny/9'
// :param graph_id => null
// :param min_weight => 0.01
// :param limit => 10
MATCH (g:Graph)
WHERE g.complete = true AND ($graph_id IS NULL OR g.id = $graph_id)
MATCH (t:TokenNode {graph: g.id})-[:INSTANCE_OF]->(:Token {key: $token_key})
MATCH p = (t)(()-[e:EDGE WHERE abs(e.weight) >= $min_weight]->()){1,4}(l:LogitNode)
MATCH (l)-[:INSTANCE_OF]->(:Token {key: $logit_key})
WITH g, p, reduce(x = 1.0, r IN relationships(p) | x * r.weight) AS effect
RETURN g.id AS graph, effect, length(p) AS hops,
       [n IN nodes(p) | n.node] AS nodes,
       [n IN nodes(p) | COLLECT { MATCH (n)-[:INSTANCE_OF]->(x) RETURN x.key }[0]] AS refs
ORDER BY abs(effect) DESC, graph
LIMIT $limit
