// Features shared by a set of prompts: active in at least $min_fraction of their complete graphs.
// `fraction` is the share of the prompts' complete graphs that keep an instance of the feature;
// `mean_influence` averages, over those graphs, the feature's largest instance influence.
//
// :param prompt_ids => ['p0', 'p1', 'p2']
// :param min_fraction => 1.0
// :param limit => 50
MATCH (g:Graph)-[:OF_PROMPT]->(p:Prompt)
WHERE g.complete = true AND p.id IN $prompt_ids
WITH collect(g) AS graphs
UNWIND graphs AS g
MATCH (n:FeatureNode)-[:IN_GRAPH]->(g)
MATCH (n)-[:INSTANCE_OF]->(f:Feature)
WITH f, g, size(graphs) AS total, max(n.influence) AS influence
WITH f, total, count(g) AS graphs, avg(influence) AS mean_influence
WITH f, total, graphs, mean_influence, toFloat(graphs) / total AS fraction
WHERE fraction >= $min_fraction
RETURN f.key AS feature, graphs, total, fraction, mean_influence
ORDER BY fraction DESC, mean_influence DESC, feature
LIMIT $limit
