// Hub features of the aggregated graph, by the PageRank (`pagerank`) and betweenness (`betweenness`)
// properties `circuitbase analyze --step hubs` writes. $order picks the ranking ('pagerank' or
// 'betweenness').
//
// :param order => 'pagerank'
// :param limit => 20
MATCH (f:Feature)
WHERE f.pagerank IS NOT NULL
RETURN f.key AS feature, f.layer AS layer, f.pagerank AS pagerank, f.betweenness AS betweenness,
       f.community AS community
ORDER BY CASE $order WHEN 'betweenness' THEN f.betweenness ELSE f.pagerank END DESC, feature
LIMIT $limit
