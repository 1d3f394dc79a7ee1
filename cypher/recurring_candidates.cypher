// Candidate recurring edges: aggregated ATTRIBUTES edges seen in >= $min_support graphs. ATTRIBUTES
// counts every complete graph with a kept instance edge of the pair, so it bounds the support of the pair
// from above (whatever the weight threshold); subcircuit mining checks each candidate exactly with
// recurring_edges.cypher. Returns element ids, the cheapest handle to seek the nodes again.
//
// :param min_support => 2
MATCH (u)-[r:ATTRIBUTES]->(v)
WHERE r.graphs >= $min_support
RETURN elementId(u) AS source, elementId(v) AS target
