// Complete graphs of two sides, counted per prompt tag set and dataset (the groups strata are made of).
// Sides: $split = 'correct' (A = Graph.correct true, B = false; unknown left out), or A = prompts tagged
// $a_tag, B = prompts tagged $b_tag (a prompt with both tags counts on A).
// One row per (tags, dataset): n_a and n_b graphs of each side.
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
RETURN coalesce(p.tags, []) AS tags, p.dataset AS dataset,
       count(CASE side WHEN 'a' THEN 1 END) AS n_a, count(CASE side WHEN 'b' THEN 1 END) AS n_b
