// Support of every recurring subcircuit on two sides of complete graphs, per prompt tag set and dataset
// (the groups strata are made of; circuitbase.analysis.compare tests and ranks the rows).
// Sides as in compare_strata.cypher. k_a / k_b: graphs of each side the subcircuit occurs in (OCCURS_IN);
// groups: {tags, dataset, k_a, k_b} for each group it occurs in; influence_a / influence_b: mean
// OCCURS_IN.influence per side.
//
// :param split => 'correct'
// :param a_tag => null
// :param b_tag => null
MATCH (g:Graph)-[:OF_PROMPT]->(p:Prompt)
WHERE g.complete = true
WITH g, p, CASE
    WHEN $split = 'correct' THEN CASE g.correct WHEN true THEN 'a' WHEN false THEN 'b' END
    WHEN $a_tag IN p.tags THEN 'a'
    WHEN $b_tag IN p.tags THEN 'b'
  END AS side
WHERE side IS NOT NULL
MATCH (s:Subcircuit)-[o:OCCURS_IN]->(g)
WITH s, coalesce(p.tags, []) AS tags, p.dataset AS dataset,
     count(CASE side WHEN 'a' THEN 1 END) AS k_a, count(CASE side WHEN 'b' THEN 1 END) AS k_b,
     sum(CASE side WHEN 'a' THEN o.influence END) AS sum_a, sum(CASE side WHEN 'b' THEN o.influence END) AS sum_b
WITH s, collect({tags: tags, dataset: dataset, k_a: k_a, k_b: k_b}) AS groups,
     sum(k_a) AS k_a, sum(k_b) AS k_b, sum(sum_a) AS sum_a, sum(sum_b) AS sum_b
RETURN s.key AS subcircuit, s.rank AS rank, s.sources AS sources, s.targets AS targets, k_a, k_b, groups,
       CASE WHEN k_a > 0 THEN sum_a / k_a END AS influence_a,
       CASE WHEN k_b > 0 THEN sum_b / k_b END AS influence_b
ORDER BY rank
