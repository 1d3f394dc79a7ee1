// Recurring feature-level edges: the input of subcircuit mining (see "Recurrence" in cypher/README.md).
// An edge (u, v) between global nodes (Feature or Token) occurs in a complete graph when some EDGE from an
// instance of u to an instance of v has |weight| >= $min_weight; its weight there is the sum of those
// edges. Returns the edges occurring in >= $min_support graphs with the graphs and per-graph weights.
//
// :param min_weight => 0.05
// :param min_support => 2
MATCH (g:Graph)
WHERE g.complete = true
MATCH (a:GraphNode {graph: g.id})-[e:EDGE]->(b:GraphNode)
WHERE abs(e.weight) >= $min_weight
MATCH (a)-[:INSTANCE_OF]->(u)
MATCH (b)-[:INSTANCE_OF]->(v)
WITH u.key AS source, v.key AS target, g.id AS graph, sum(e.weight) AS weight
WITH source, target, collect(graph) AS graphs, collect(weight) AS weights
WHERE size(graphs) >= $min_support
RETURN source, target, graphs, weights
ORDER BY size(graphs) DESC, source, target
