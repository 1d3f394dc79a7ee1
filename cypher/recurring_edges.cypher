// Recurring feature-level edges: the input of subcircuit mining (see "Recurrence" in cypher/README.md),
// for one batch of candidate pairs (element ids from recurring_candidates.cypher).
// An edge (u, v) between global nodes (Feature or Token) occurs in a complete graph when some EDGE from an
// instance of u to an instance of v has |weight| >= $min_weight; its weight there is the sum of those
// edges, its influence the largest influence of a feature instance at either end of one of them (0 when
// both ends are tokens). Returns the pairs occurring in >= $min_support graphs with the graphs and
// per-graph weights and influences.
//
// :param pairs => [['4:abc:0', '4:abc:1']]
// :param min_weight => 0.05
// :param min_support => 2
UNWIND $pairs AS pair
MATCH (u) WHERE elementId(u) = pair[0]
MATCH (v) WHERE elementId(v) = pair[1]
MATCH (u)<-[:INSTANCE_OF]-(a:GraphNode)-[e:EDGE]->(b:GraphNode)-[:INSTANCE_OF]->(v)
WHERE abs(e.weight) >= $min_weight
WITH u, v, a.graph AS graph, sum(e.weight) AS weight,
     max(CASE WHEN a:FeatureNode THEN coalesce(a.influence, 0.0) ELSE 0.0 END) AS source_influence,
     max(CASE WHEN b:FeatureNode THEN coalesce(b.influence, 0.0) ELSE 0.0 END) AS target_influence
MATCH (g:Graph {id: graph})
WHERE g.complete = true
WITH u, v, collect(graph) AS graphs, collect(weight) AS weights,
     collect(CASE WHEN source_influence > target_influence THEN source_influence ELSE target_influence END)
       AS influences
WHERE size(graphs) >= $min_support
RETURN u.key AS source, v.key AS target, graphs, weights, influences
