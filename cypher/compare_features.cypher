// Presence of every feature on two sides of complete graphs, per prompt tag set and dataset (the groups
// strata are made of; circuitbase.analysis.compare tests and ranks the rows).
// Sides as in compare_strata.cypher. For each feature seen in >= $min_graphs graphs of both sides
// together: k_a / k_b graphs of each side keep an instance of it; groups: {tags, dataset, k_a, k_b} for
// each group it occurs in; influence_a / influence_b: mean largest-instance influence where present;
// label: the feature's label (ingest.labels), or null (read through properties(f): in a database with no
// labels at all, f.label draws an unknown-property warning).
//
// :param split => 'correct'
// :param a_tag => null
// :param b_tag => null
// :param min_graphs => 2
MATCH (g:Graph)-[:OF_PROMPT]->(p:Prompt)
WHERE g.complete = true
WITH g, p, CASE
    WHEN $split = 'correct' THEN CASE g.correct WHEN true THEN 'a' WHEN false THEN 'b' END
    WHEN $a_tag IN p.tags THEN 'a'
    WHEN $b_tag IN p.tags THEN 'b'
  END AS side
WHERE side IS NOT NULL
MATCH (n:FeatureNode)-[:IN_GRAPH]->(g)
MATCH (n)-[:INSTANCE_OF]->(f:Feature)
WITH f, g, side, coalesce(p.tags, []) AS tags, p.dataset AS dataset, max(n.influence) AS influence
WITH f, tags, dataset,
     count(CASE side WHEN 'a' THEN 1 END) AS k_a, count(CASE side WHEN 'b' THEN 1 END) AS k_b,
     sum(CASE side WHEN 'a' THEN influence END) AS sum_a, sum(CASE side WHEN 'b' THEN influence END) AS sum_b
WITH f, collect({tags: tags, dataset: dataset, k_a: k_a, k_b: k_b}) AS groups,
     sum(k_a) AS k_a, sum(k_b) AS k_b, sum(sum_a) AS sum_a, sum(sum_b) AS sum_b
WHERE k_a + k_b >= $min_graphs
RETURN f.key AS feature, properties(f)['label'] AS label, k_a, k_b, groups,
       CASE WHEN k_a > 0 THEN sum_a / k_a END AS influence_a,
       CASE WHEN k_b > 0 THEN sum_b / k_b END AS influence_b
ORDER BY feature
