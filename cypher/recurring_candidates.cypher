// Candidate recurring edges: aggregated ATTRIBUTES edges seen in >= $min_support graphs, except those from
// a start token (an input Token at position 0 of every complete graph: a constant, see "Recurrence" in
// cypher/README.md). ATTRIBUTES counts every complete graph with a kept instance edge of the pair, so it
// bounds the support of the pair from above (whatever the weight threshold); subcircuit mining checks each
// candidate exactly with recurring_edges.cypher. Returns element ids, the cheapest handle to seek the nodes
// again.
//
// :param min_support => 2
// :param start_tokens => ['toy/0']
MATCH (u)-[r:ATTRIBUTES]->(v)
WHERE r.graphs >= $min_support AND NOT u.key IN $start_tokens
RETURN elementId(u) AS source, elementId(v) AS target
