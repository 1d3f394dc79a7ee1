// The pruned attribution graph of one prompt: every kept edge with its endpoints (complete graphs only).
// Error nodes have no global node (source_ref / target_ref are null); token and logit nodes refer to a
// Token key ("model/id"), feature nodes to a Feature key ("set/layer/index").
// Returns one row per EDGE, strongest |weight| first.
//
// :param graph_id => 'tiny-set:p0'
MATCH (g:Graph {id: $graph_id})
WHERE g.complete = true
MATCH (a:GraphNode {graph: g.id})-[e:EDGE]->(b:GraphNode)
OPTIONAL MATCH (a)-[:INSTANCE_OF]->(ra)
OPTIONAL MATCH (b)-[:INSTANCE_OF]->(rb)
RETURN a.node AS source, [l IN labels(a) WHERE l <> 'GraphNode'][0] AS source_kind, ra.key AS source_ref,
       b.node AS target, [l IN labels(b) WHERE l <> 'GraphNode'][0] AS target_kind, rb.key AS target_ref,
       e.weight AS weight
ORDER BY abs(e.weight) DESC, source, target
