// Features whose presence differs most between two sets of complete graphs, with effect sizes.
// Sides as in features_unique.cypher ($split = 'correct', or $a_tag vs $b_tag). For each feature seen on
// either side: k_a of n_a graphs of A and k_b of n_b of B keep an instance of it; p_a = k_a / n_a;
// diff = p_a - p_b; log_odds = log((k_a + .5) / (n_a - k_a + .5)) - log((k_b + .5) / (n_b - k_b + .5))
// (Haldane-corrected), se its standard error, z = log_odds / se; influence_a / influence_b: mean
// largest-instance influence where present.
// Ranked by |diff| (the effect size), then |z|.
//
// :param split => 'correct'
// :param a_tag => null
// :param b_tag => null
// :param min_graphs => 2
// :param limit => 25
MATCH (g:Graph)-[:OF_PROMPT]->(p:Prompt)
WHERE g.complete = true
WITH g, CASE
    WHEN $split = 'correct' THEN CASE g.correct WHEN true THEN 'a' WHEN false THEN 'b' END
    WHEN $a_tag IN p.tags THEN 'a'
    WHEN $b_tag IN p.tags THEN 'b'
  END AS side
WHERE side IS NOT NULL
WITH collect({g: g, side: side}) AS members
WITH members, size([m IN members WHERE m.side = 'a']) AS n_a, size([m IN members WHERE m.side = 'b']) AS n_b
UNWIND members AS m
WITH m.g AS g, m.side AS side, n_a, n_b
MATCH (n:FeatureNode)-[:IN_GRAPH]->(g)
MATCH (n)-[:INSTANCE_OF]->(f:Feature)
WITH f, g, side, n_a, n_b, max(n.influence) AS influence
WITH f, n_a, n_b,
     count(CASE side WHEN 'a' THEN 1 END) AS k_a, count(CASE side WHEN 'b' THEN 1 END) AS k_b,
     avg(CASE side WHEN 'a' THEN influence END) AS influence_a,
     avg(CASE side WHEN 'b' THEN influence END) AS influence_b
WHERE k_a + k_b >= $min_graphs
WITH f, n_a, n_b, k_a, k_b, influence_a, influence_b,
     log((k_a + 0.5) / (n_a - k_a + 0.5)) - log((k_b + 0.5) / (n_b - k_b + 0.5)) AS log_odds,
     sqrt(1.0 / (k_a + 0.5) + 1.0 / (n_a - k_a + 0.5) + 1.0 / (k_b + 0.5) + 1.0 / (n_b - k_b + 0.5)) AS se
RETURN f.key AS feature, k_a, n_a, k_b, n_b, toFloat(k_a) / n_a AS p_a, toFloat(k_b) / n_b AS p_b,
       toFloat(k_a) / n_a - toFloat(k_b) / n_b AS diff, log_odds, se, log_odds / se AS z,
       influence_a, influence_b
ORDER BY abs(toFloat(k_a) / n_a - toFloat(k_b) / n_b) DESC, abs(log_odds / se) DESC, feature
LIMIT $limit
