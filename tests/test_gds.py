"""Open GDS really runs on the session's server, driven through the `graphdatascience` client."""

from collections.abc import Iterator

import neo4j
import pytest
from graphdatascience import GraphDataScience

from circuitbase.settings import Neo4jSettings

pytestmark = pytest.mark.neo4j


@pytest.fixture
def gds(clean_db: neo4j.Driver, neo4j_settings: Neo4jSettings) -> Iterator[GraphDataScience]:
    client = GraphDataScience(
        neo4j_settings.uri,
        auth=(neo4j_settings.user, neo4j_settings.password),
        database=neo4j_settings.database,
        arrow=False,
        show_progress=False,
    )
    yield client
    client.close()


def _names_by_node_id(gds: GraphDataScience, label: str) -> dict[int, str]:
    frame = gds.run_cypher(f"MATCH (n:{label}) RETURN id(n) AS nodeId, n.name AS name")
    return dict(zip(frame["nodeId"], frame["name"], strict=True))


def test_louvain_splits_two_cliques_joined_by_one_edge(gds: GraphDataScience) -> None:
    cliques = [["a0", "a1", "a2", "a3"], ["b0", "b1", "b2", "b3"]]
    edges = [[c[i], c[j]] for c in cliques for i in range(4) for j in range(i + 1, 4)] + [["a3", "b0"]]
    gds.run_cypher(
        "UNWIND $names AS name CREATE (:Member {name: name})",
        params={"names": [name for clique in cliques for name in clique]},
    )
    gds.run_cypher(
        "UNWIND $edges AS e MATCH (s:Member {name: e[0]}), (t:Member {name: e[1]}) CREATE (s)-[:LINK]->(t)",
        params={"edges": edges},
    )
    graph, projected = gds.graph.project.native("cliques", "Member", {"LINK": {"orientation": "UNDIRECTED"}})
    assert (projected.node_count, projected.relationship_count) == (8, 26)

    communities = gds.louvain.stream(graph)
    names = _names_by_node_id(gds, "Member")
    groups: dict[int, set[str]] = {}
    for node_id, community in zip(communities["nodeId"], communities["communityId"], strict=True):
        groups.setdefault(community, set()).add(names[node_id])
    assert sorted(sorted(group) for group in groups.values()) == cliques
    graph.drop()


def test_node_similarity_gives_exact_jaccard_on_a_bipartite_graph(gds: GraphDataScience) -> None:
    likes = {"ann": ["x1", "x2", "x3"], "bob": ["x1", "x2"], "cat": ["x3", "x4"]}
    gds.run_cypher(
        "UNWIND keys($likes) AS person CREATE (p:Person {name: person}) "
        "WITH p, $likes[person] AS items UNWIND items AS item "
        "MERGE (i:Item {name: item}) CREATE (p)-[:LIKES]->(i)",
        params={"likes": likes},
    )
    graph, _ = gds.graph.project.native("likes", ["Person", "Item"], "LIKES")

    pairs = gds.node_similarity.stream(graph)
    names = _names_by_node_id(gds, "Person")
    similarity = {
        (names[a], names[b]): score
        for a, b, score in zip(pairs["node1"], pairs["node2"], pairs["similarity"], strict=True)
    }
    # ann∩bob = {x1,x2} of 3 items; ann∩cat = {x3} of 4; bob∩cat = {} (not reported).
    expected = {("ann", "bob"): 2 / 3, ("bob", "ann"): 2 / 3, ("ann", "cat"): 1 / 4, ("cat", "ann"): 1 / 4}
    assert similarity == pytest.approx(expected, abs=1e-12)
    graph.drop()
