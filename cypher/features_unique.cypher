// Features unique to one side of a split: active in >= $min_graphs complete graphs of one side, none of
// the other. Sides: $split = 'correct' puts graphs with correct = true on side A and correct = false on B
// (unknown correctness is left out); otherwise A = prompts tagged $a_tag, B = prompts tagged $b_tag (a
// prompt with both tags counts on side A).
//
// :param split => null
// :param a_tag => 'capitals'
// :param b_tag => 'arithmetic'
// :param min_graphs => 2
// :param limit => 50
MATCH (g:Graph)-[:OF_PROMPT]->(p:Prompt)
WHERE g.complete = true
WITH g, CASE
    WHEN $split = 'correct' THEN CASE g.correct WHEN true THEN 'a' WHEN false THEN 'b' END
    WHEN $a_tag IN p.tags THEN 'a'
    WHEN $b_tag IN p.tags THEN 'b'
  END AS side
WHERE side IS NOT NULL
MATCH (n:FeatureNode)-[:IN_GRAPH]->(g)
MATCH (n)-[:INSTANCE_OF]->(f:Feature)
WITH f, g, side, max(n.influence) AS influence
WITH f, count(CASE side WHEN 'a' THEN 1 END) AS graphs_a, count(CASE side WHEN 'b' THEN 1 END) AS graphs_b,
     avg(influence) AS mean_influence
WHERE (graphs_a = 0 OR graphs_b = 0) AND graphs_a + graphs_b >= $min_graphs
RETURN f.key AS feature, CASE WHEN graphs_b = 0 THEN 'a' ELSE 'b' END AS side, graphs_a, graphs_b,
       mean_influence
ORDER BY graphs_a + graphs_b DESC, mean_influence DESC, feature
LIMIT $limit
