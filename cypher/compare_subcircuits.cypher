// Recurring subcircuits whose support differs most between two sets of complete graphs, with effect sizes.
// Sides as in features_unique.cypher. k_a / k_b: graphs of each side the subcircuit occurs in (OCCURS_IN);
// p, diff, log_odds, se and z as in compare_features.cypher. Ranked by |diff| (the effect size), then |z|.
//
// :param split => 'correct'
// :param a_tag => null
// :param b_tag => null
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
MATCH (s:Subcircuit)-[o:OCCURS_IN]->(g)
WITH s, n_a, n_b,
     count(CASE side WHEN 'a' THEN 1 END) AS k_a, count(CASE side WHEN 'b' THEN 1 END) AS k_b,
     avg(CASE side WHEN 'a' THEN o.influence END) AS influence_a,
     avg(CASE side WHEN 'b' THEN o.influence END) AS influence_b
WITH s, n_a, n_b, k_a, k_b, influence_a, influence_b,
     log((k_a + 0.5) / (n_a - k_a + 0.5)) - log((k_b + 0.5) / (n_b - k_b + 0.5)) AS log_odds,
     sqrt(1.0 / (k_a + 0.5) + 1.0 / (n_a - k_a + 0.5) + 1.0 / (k_b + 0.5) + 1.0 / (n_b - k_b + 0.5)) AS se
RETURN s.key AS subcircuit, s.rank AS rank, s.sources AS sources, s.targets AS targets,
       k_a, n_a, k_b, n_b, toFloat(k_a) / n_a AS p_a, toFloat(k_b) / n_b AS p_b,
       toFloat(k_a) / n_a - toFloat(k_b) / n_b AS diff, log_odds, se, log_odds / se AS z,
       influence_a, influence_b
ORDER BY abs(toFloat(k_a) / n_a - toFloat(k_b) / n_b) DESC, abs(log_odds / se) DESC, rank
LIMIT $limit
