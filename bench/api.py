"""GraphQL API latency: p50/p95/p99, requests/s and response bytes of typical dashboard queries at 1, 8
and 32 clients.

Data (synthetic, from bench/ingest.py's generator, written with the real ingest writer): one graph of
~1,500 kept nodes and 20,000 edges, and two tagged sets of 50 smaller graphs (150 features, 1,500 edges);
every feature gets a label and five top contexts, as an annotated study has. The bench starts
`circuitbase serve` (uvicorn, one process) on loopback and times, per concurrency level, `--requests`
requests or `--seconds` seconds, whichever ends first (after one cold request, reported on its own), of:
  graph       the big graph's nodes (with feature labels) and its 5,000 strongest edges as nested GraphQL
              fields (one object per node and edge), as an API client selects them
  graph-page  the dashboard's graph page (api/static/app.js GRAPH_QUERY) on the same view: the graph, its
              view as compact JSON text (GraphView.compact: one query, encoded once, cached; the client
              parses it as the page does), subcircuits and similar graphs
  graph-page-nested  the query the graph page sent before GraphView.compact (the baseline): the view's
              nodes in words with their features, tokens and edges as nested fields, and the prompt
  feature     a feature page: the feature, its 25 most influential graphs and 25 neighbours
  comparison  set A vs set B: ranked feature and subcircuit contrasts (25 each)
It uses the server in CIRCUITBASE_NEO4J_URI (wiped: pass --wipe), else its own local instance
("bench-api"). The machine's load average is printed before and after: on a shared machine, other work
inflates the figures.

    python bench/api.py                    # about 2 minutes on 2 CPU cores
    python bench/api.py --queries graph-page graph-page-nested --clients 1 8
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from circuitbase.dbserver.config import InstanceConfig, Layout
from circuitbase.dbserver.server import start, stop
from circuitbase.ingest.model import rows_from_graph
from circuitbase.ingest.schema import apply_schema, wipe_database
from circuitbase.ingest.writer import write_graph
from circuitbase.settings import (
    PASSWORD_ENV,
    URI_ENV,
    USER_ENV,
    load_neo4j_settings,
    local_instance_settings,
    open_driver,
)

_spec = importlib.util.spec_from_file_location("bench_ingest", Path(__file__).with_name("ingest.py"))
assert _spec is not None and _spec.loader is not None
bench_ingest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_ingest)

INSTANCE = InstanceConfig(name="bench-api", bolt_port=7705, http_port=7495, heap="1g", pagecache="512m")
PAGE_VIEW = {"minInfluence": 0.0, "topK": 5000}  # the page's view: every node, the 5,000 strongest edges


def page_query() -> str:
    """The dashboard graph page's query, as api/static/app.js sends it."""
    script = (Path(__file__).parents[1] / "api" / "static" / "app.js").read_text(encoding="utf-8")
    found = re.search(r"const GRAPH_QUERY = `(.*?)`;", script, flags=re.DOTALL)
    if found is None:
        raise SystemExit("api/static/app.js has no GRAPH_QUERY")
    return found.group(1)


QUERIES = {
    "graph": """query($id: ID!) { graph(id: $id) { id correct view(topK: 5000) {
        nodes { node kind layer position influence feature { key label } }
        edges { source target weight } } } }""",
    "graph-page": page_query(),
    "graph-page-nested": """query($id: ID!, $minInfluence: Float!, $topK: Int!) { graph(id: $id) {
        id model transcoderSet promptId promptText topToken correct replacementScore completenessScore nNodes
        nEdges prompt { tokens }
        view(minInfluence: $minInfluence, topK: $topK) {
          nodes { node kind layer position featureIndex influence activation probability text
            feature { key label description topContexts supernodes { key name algorithm } } token { text } }
          edges { source target weight } }
        subcircuits { subcircuit { key rank support sentence } weight }
        similar(limit: 5) { graphId text score } } }""",
    "feature": """query($key: ID!) { feature(key: $key) { key label layer
        graphs(limit: 25) { graphId influence activation correct }
        neighbours(limit: 25) { key kind graphs sumAbs } } }""",
    "comparison": """{ compareSets(sides: {aTag: "setA", bTag: "setB"}, limit: 25) { nA nB
        features { key kA kB diff z } subcircuits { key diff } } }""",
}
# every feature's label and top contexts, as an annotation tool writes them
_ANNOTATE = """
MATCH (f:Feature)
SET f.label = 'concept ' + toString(f.index) + ' at layer ' + toString(f.layer),
    f.top_contexts = [i IN range(1, 5) | 'a context where feature ' + f.key + ' fires, number ' + toString(i)]
"""


def load_data(driver, database: str) -> tuple[str, str]:
    """Write the bench graphs; returns (the big graph's id, the key of the most shared feature)."""
    wipe_database(driver, database=database)
    apply_schema(driver, database=database)
    rng = np.random.default_rng(0)
    shape = {"layers": 26, "positions": 12, "errors": 80}
    big = bench_ingest.synthetic_graph(rng, 0, features=1400, edges=20_000, **shape)
    big_rows = rows_from_graph(big)
    write_graph(driver, big_rows, database=database)
    for i in range(1, 101):
        graph = bench_ingest.synthetic_graph(rng, i, features=150, edges=1500, **shape)
        graph.prompt_meta = {"id": f"bench-{i:05d}", "tags": ["setA" if i % 2 else "setB"]}
        write_graph(driver, rows_from_graph(graph), database=database)
    driver.execute_query(_ANNOTATE, database_=database)
    records, _, _ = driver.execute_query(
        "MATCH (f:Feature)<-[:INSTANCE_OF]-(:FeatureNode) RETURN f.key AS key, count(*) AS n "
        "ORDER BY n DESC LIMIT 1",
        database_=database,
    )
    return big_rows.id, records[0]["key"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unpack_view(body: dict) -> object:
    """The graph page's view, parsed from its JSON text as the page does (its cost lands on the client)."""
    return json.loads(body["data"]["graph"]["view"]["compact"])


UNPACK = {"graph-page": unpack_view}  # what a client does with a response beyond parsing it


def run_level(
    url: str,
    query: str,
    variables: dict,
    *,
    clients: int,
    requests: int,
    seconds: float,
    unpack: Callable[[dict], object] | None = None,
):
    """Latencies (s) of up to `requests` requests from `clients` threads, stopping after `seconds`, the
    wall time and the size of the last response body (bytes); `unpack(body)` runs on each response
    (untimed, but on the same CPUs as the server)."""
    deadline = time.perf_counter() + seconds
    per_client = max(1, requests // clients)
    sizes: list[int] = []

    def client() -> list[float]:
        out = []
        with httpx.Client(timeout=60) as http:
            for _ in range(per_client):
                if time.perf_counter() > deadline:
                    break
                t0 = time.perf_counter()
                response = http.post(url, json={"query": query, "variables": variables})
                out.append(time.perf_counter() - t0)
                sizes.append(len(response.content))
                body = response.json()
                if response.status_code != 200 or body.get("errors"):
                    raise SystemExit(f"request failed: {response.status_code} {body.get('errors')}")
                if unpack is not None:
                    unpack(body)
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [x for xs in pool.map(lambda _: client(), range(clients)) for x in xs]
    return latencies, time.perf_counter() - t0, sizes[-1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per query and level (default 200)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="time cap per query and level (default 10)"
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--queries", nargs="+", choices=list(QUERIES), default=list(QUERIES), help="default: all"
    )
    parser.add_argument("--wipe", action="store_true", help=f"allow wiping the server in {URI_ENV}")
    args = parser.parse_args()

    env = dict(os.environ)
    started = None
    if os.environ.get(URI_ENV):
        if not args.wipe:
            raise SystemExit(f"the bench wipes its database: pass --wipe to use the server in {URI_ENV}")
        settings = load_neo4j_settings()
    else:
        layout = Layout.resolve()
        started = start(INSTANCE, layout=layout, log=lambda _line: None)
        settings = local_instance_settings(name=INSTANCE.name, cache_dir=layout.root)
        env.update({URI_ENV: settings.uri, USER_ENV: settings.user, PASSWORD_ENV: settings.password})
    server = None
    try:
        with open_driver(settings) as driver:
            t0 = time.perf_counter()
            graph_id, feature = load_data(driver, settings.database)
            seconds = time.perf_counter() - t0
            print(f"data: 1 graph of ~1,500 nodes + 100 graphs in 2 sets, written in {seconds:.0f}s")
        port = free_port()
        cli = [sys.executable, "-c", "from circuitbase.cli import main; main()"]
        server = subprocess.Popen(
            [*cli, "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("the server did not become ready")
        variables = {
            "graph": {"id": graph_id},
            "graph-page": {"id": graph_id, **PAGE_VIEW},
            "graph-page-nested": {"id": graph_id, **PAGE_VIEW},
            "feature": {"key": feature},
            "comparison": {},
        }
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before")
        print(
            f"{'query':<18}{'clients':>8}{'requests':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
            f"{'req/s':>9}{'bytes':>10}"
        )
        for name in args.queries:
            # warm-up; its first request is the cold one (no cached results, like the first after a write)
            first, _, size = run_level(
                f"{base}/graphql",
                QUERIES[name],
                variables[name],
                clients=1,
                requests=3,
                seconds=30,
                unpack=UNPACK.get(name),
            )
            print(f"{name:<18}{'cold':>8}{1:>10}{first[0] * 1e3:>9.1f}{'':>27}{size:>10}")
            for clients in args.clients:
                lat, wall, size = run_level(
                    f"{base}/graphql",
                    QUERIES[name],
                    variables[name],
                    clients=clients,
                    requests=args.requests,
                    seconds=args.seconds,
                    unpack=UNPACK.get(name),
                )
                q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
                print(
                    f"{name:<18}{clients:>8}{len(lat):>10}{q[49] * 1e3:>9.1f}{q[94] * 1e3:>9.1f}"
                    f"{q[98] * 1e3:>9.1f}{len(lat) / wall:>9.1f}{size:>10}"
                )
        print(f"load average {os.getloadavg()[0]:.1f} after")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if started is not None and not started.already_running:
            stop(INSTANCE.name, layout=Layout.resolve())


if __name__ == "__main__":
    main()
