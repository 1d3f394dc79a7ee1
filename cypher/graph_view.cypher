// One graph at a pruning level as the dashboard draws it, in one row (none for an unknown or incomplete
// graph): `tokens`, its prompt's tokens; `nodes`, its kept nodes (feature and error nodes with influence >= $min_influence, every token
// and logit node; in no particular order, `idx` numbers them), each with what is shown of its Feature
// (label, logit-lens tokens, the manual supernodes it belongs to as [key, name]) or Token (text); and the
// $top_k strongest edges with |weight| >= $min_abs_weight between kept nodes, as `sources`, `targets`
// (node idx) and `weights`, strongest first (ties by source and target node id).
//
// :param graph_id => 'tiny-set:p0'
// :param min_influence => 0.0
// :param min_abs_weight => 0.0
// :param top_k => 1000
MATCH (g:Graph {id: $graph_id})-[:OF_PROMPT]->(p:Prompt)
WHERE g.complete = true
// the edges first: an operator that holds rows (the sort) counts, per row, the memory of every value it
// carries, and the node list would be one of them
CALL (g) {
  // influence is >= 0 by construction, so a bound <= 0 keeps every node
  MATCH (a:GraphNode {graph: g.id})-[e:EDGE]->(b:GraphNode)
  WHERE abs(e.weight) >= $min_abs_weight
    AND ($min_influence <= 0
         OR (a.influence >= $min_influence OR a:TokenNode OR a:LogitNode)
            AND (b.influence >= $min_influence OR b:TokenNode OR b:LogitNode))
  WITH a.idx AS source, b.idx AS target, e.weight AS weight, a.node AS a_node, b.node AS b_node
  ORDER BY abs(weight) DESC, a_node, b_node
  LIMIT $top_k
  RETURN collect(source) AS sources, collect(target) AS targets, collect(weight) AS weights
}
CALL (g) {
  MATCH (n:GraphNode {graph: g.id})
  WHERE n.influence >= $min_influence OR n:TokenNode OR n:LogitNode
  OPTIONAL MATCH (n)-[:INSTANCE_OF]->(r)
  RETURN collect(n {
    .idx, .node, .layer, .position, .influence, .activation, .feature, .probability,
    kind: [l IN labels(n) WHERE l <> 'GraphNode'][0],
    ref: r.key, label: r.label, promoted_tokens: r.promoted_tokens, text: r.text,
    supernodes: CASE WHEN r:Feature
      THEN [(s:Supernode)-[:HAS_MEMBER]->(r) WHERE s.algorithm = 'manual' | [s.key, s.name]] END
  }) AS nodes
}
RETURN p.tokens AS tokens, nodes, sources, targets, weights
