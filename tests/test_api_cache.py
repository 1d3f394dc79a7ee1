"""The API's result cache against the real Neo4j server: set comparisons and a feature's graphs and
neighbours are served from it (one query: the state token) until an ingest or an analysis changes the
database, and are then never stale."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterator

import neo4j
import pytest
from fastapi.testclient import TestClient

from circuitbase.analysis.gds import finish_run, record_run
from circuitbase.analysis.subcircuits import SubcircuitConfig, mine_subcircuits
from circuitbase.analysis.synthetic import SyntheticConfig, synthetic_graph
from circuitbase.api.app import create_app
from circuitbase.api.cache import ResultCache
from circuitbase.ingest.model import feature_key
from circuitbase.ingest.schema import apply_schema, wipe_database
from circuitbase.ingest.writer import write_graph
from tests.test_api import CountingDriver, codes, data, gql

pytestmark = pytest.mark.neo4j

SYNTHETIC = SyntheticConfig(n_graphs=12)
COMPARE = """{ compareSets(sides: {aTag: "capitals", bTag: "arithmetic"}, limit: 50) {
    nA nB features { key kA kB diff z } subcircuits { key kA kB }
    uniqueFeatures(limit: 50) { key side graphsA graphsB } } }"""
PLANTED = feature_key("synthetic-set", *SYNTHETIC.circuits[0].features[0])
FEATURE = f"""{{ feature(key: "{PLANTED}") {{ key graphs(limit: 50) {{ graphId influence }}
    neighbours(limit: 50) {{ direction key graphs sumAbs }} }} }}"""


@pytest.fixture(scope="module")
def store(neo4j_driver: neo4j.Driver) -> neo4j.Driver:
    """Synthetic planted-circuit graphs (tagged 'capitals' and 'arithmetic') with subcircuits mined."""
    wipe_database(neo4j_driver)
    apply_schema(neo4j_driver)
    for i in range(SYNTHETIC.n_graphs):
        write_graph(neo4j_driver, synthetic_graph(i, config=SYNTHETIC))
    mine_subcircuits(neo4j_driver)
    return neo4j_driver


@pytest.fixture(scope="module")
def counting(store: neo4j.Driver) -> CountingDriver:
    return CountingDriver(store)


@pytest.fixture(scope="module")
def client(counting: CountingDriver) -> Iterator[TestClient]:
    with TestClient(create_app(driver=counting)) as client:  # type: ignore[arg-type]
        yield client


def fresh(store: neo4j.Driver, query: str) -> dict:
    """The answer of a new server (empty cache)."""
    with TestClient(create_app(driver=store)) as other:
        return data(other, query)


def sent(client: TestClient, counting: CountingDriver, query: str) -> tuple[dict, int]:
    """The answer, and how many queries answering it sent to Neo4j."""
    before = counting.queries
    out = data(client, query)
    return out, counting.queries - before


def test_results_are_cached_until_an_ingest_or_an_analysis(
    client: TestClient, counting: CountingDriver, store: neo4j.Driver
) -> None:
    (comparison, n), (feature, m) = sent(client, counting, COMPARE), sent(client, counting, FEATURE)
    assert n > 1 and m > 2 and comparison["compareSets"]["subcircuits"]
    # served from the cache: the state token only (and the feature's own row, which is not cached)
    assert sent(client, counting, COMPARE) == (comparison, 1)
    assert sent(client, counting, FEATURE) == (feature, 2)

    extra = synthetic_graph(SYNTHETIC.n_graphs, config=SYNTHETIC)
    assert extra.prompt["tags"] == ["capitals"]
    write_graph(store, extra)
    ingested = data(client, COMPARE)
    assert ingested["compareSets"]["nA"] == comparison["compareSets"]["nA"] + 1
    assert ingested == fresh(store, COMPARE)
    graphs = data(client, FEATURE)["feature"]["graphs"]
    assert len(graphs) == len(feature["feature"]["graphs"]) + 1 and extra.id in {g["graphId"] for g in graphs}
    assert data(client, FEATURE) == fresh(store, FEATURE)

    mine_subcircuits(store, config=SubcircuitConfig(max_subcircuits=1))
    analysed, n = sent(client, counting, COMPARE)
    assert n > 1 and len(analysed["compareSets"]["subcircuits"]) == 1
    assert analysed != ingested and analysed == fresh(store, COMPARE)
    assert sent(client, counting, COMPARE)[1] == 1


def test_nothing_is_cached_while_an_analysis_step_runs(
    client: TestClient, counting: CountingDriver, store: neo4j.Driver
) -> None:
    record_run(store, "subcircuits", {})
    try:
        running = [sent(client, counting, COMPARE)[1] for _ in range(2)]
    finally:
        finish_run(store, "subcircuits", {})
    assert min(running) > 1
    assert sent(client, counting, COMPARE)[1] > 1  # the finished run is a new state
    assert sent(client, counting, COMPARE)[1] == 1


def test_a_failed_comparison_is_reported_each_time(client: TestClient, counting: CountingDriver) -> None:
    query = '{ compareSets(sides: {aTag: "capitals", bTag: "nosuchtag"}) { nA } }'
    for _ in range(2):
        before = counting.queries
        assert codes(gql(client, query)) == ["BAD_USER_INPUT"]
        assert counting.queries - before > 1  # computed again: a failure is not kept


def test_misses_are_computed_once_per_state() -> None:
    calls: list[list[Hashable]] = []

    def double(missing: list[Hashable]) -> dict[Hashable, int]:
        calls.append(missing)
        return {k: 2 * k for k in missing}  # type: ignore[operator]

    async def requests(cache: ResultCache, state: str) -> list[list[int]]:
        return list(
            await asyncio.gather(
                cache.get_many([1, 2], double, state=state), cache.get_many([2, 3], double, state=state)
            )
        )

    async def run() -> list[list[list[int]]]:
        cache = ResultCache()
        return [await requests(cache, "a"), await requests(cache, "a"), await requests(cache, "b")]

    assert asyncio.run(run()) == [[[2, 4], [4, 6]]] * 3
    # the second request of a pair finds key 2 pending; state "a" computes each key once, state "b" again
    # (a pair's two batches run on worker threads, so they may be recorded in either order)
    assert len(calls) == 4 and sorted(calls[:2]) == sorted(calls[2:]) == [[1, 2], [3]]
