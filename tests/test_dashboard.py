"""The dashboard in a real headless Chromium (Playwright) against a real uvicorn server and Neo4j.

Every view is opened by its hash route or by clicking, checked against what the GraphQL API returns, and
screenshotted to artifacts/screenshots/<view>.png (tests/browser.py: the server, Chromium and the steps).
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import neo4j
import pytest
import torch
from playwright.sync_api import Page, Route

from circuitbase.analysis.run import run_analysis
from circuitbase.api.app import ApiConfig, create_app
from circuitbase.api.auth import create_key
from circuitbase.api.interventions import ModelSource
from circuitbase.engine.interventions import FeatureIntervention
from circuitbase.ingest.model import feature_key, graph_id
from tests.api_data import FIXTURES, SYNTHETIC, TEXTS
from tests.browser import SCREENSHOTS, api, browser_page, goto, row_ids, serve, shown
from tests.intervention_reference import Reference, reference
from tests.numerics import assert_close
from tests.planted_labels import CONTEXTS, LABEL, LABELLED, LENS_ONLY, planted_key, write_planted_labels

pytest_plugins = ["tests.api_data"]  # the graph_files and store fixtures
pytestmark = pytest.mark.neo4j

TINY = FIXTURES / "tiny-llama", FIXTURES / "plt-relu"  # the tiny graphs' model and transcoders


@pytest.fixture(scope="module")
def analysed(store: neo4j.Driver) -> neo4j.Driver:
    """The API test data after every analysis step (communities, subcircuits, similarity, hubs), with the
    planted capitals circuit labelled."""
    run_analysis(store)
    write_planted_labels(store)
    return store


@pytest.fixture(scope="module")
def base_url(analysed: neo4j.Driver) -> Iterator[str]:
    """A real uvicorn server running the tiny graphs' model for interventions (on the CPU)."""
    config = ApiConfig(intervention_models=(ModelSource(*map(str, TINY)),), intervention_device="cpu")
    yield from serve(create_app(config=config, driver=analysed))


@pytest.fixture(scope="module")
def page(base_url: str) -> Iterator[Page]:
    yield from browser_page(base_url)


@pytest.fixture(scope="module")
def api_key(analysed: neo4j.Driver) -> str:
    return create_key(analysed, name="dashboard-tests")[1]


def test_dashboard_and_static_files_are_served(base_url: str) -> None:
    index = httpx.get(f"{base_url}/")
    assert index.status_code == 200 and '<main id="view"' in index.text
    script = httpx.get(f"{base_url}/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(f"{base_url}/static/nope.js").status_code == 404


def test_prompt_list_and_filters(page: Page, base_url: str) -> None:
    goto(page, base_url, "prompts", "prompts", "prompts")
    every = row_ids(page, "prompt-row", "data-prompt-id")
    assert len(every) == len(TEXTS) + SYNTHETIC.n_graphs
    assert page.inner_text("#prompt-count") == f"{len(every)} prompts"

    shown(page, lambda: page.select_option("#filter-tag", "left"), "prompts")
    assert row_ids(page, "prompt-row", "data-prompt-id") == ["p0", "p1"]
    assert "tag=left" in page.url

    shown(page, lambda: page.select_option("#filter-tag", ""), "prompts")
    shown(page, lambda: page.select_option("#filter-correct", "false"), "prompts", "prompts-incorrect")
    query = "{ prompts(filter: {correct: false}, first: 50) { edges { node { id } } } }"
    incorrect = [e["node"]["id"] for e in api(base_url, query)["prompts"]["edges"]]
    assert incorrect and row_ids(page, "prompt-row", "data-prompt-id") == incorrect
    assert set(page.locator('[data-testid="prompt-row"] .badge').all_inner_texts()) == {"incorrect"}


def test_graph_view_draws_the_layered_graph(page: Page, base_url: str) -> None:
    goto(page, base_url, "prompts", "prompts")
    shown(page, lambda: page.click('[data-testid="prompt-row"][data-prompt-id="p1"]'), "graph", "graph")
    gid = graph_id("fixtures/plt-relu", "p1")
    assert page.url.endswith("#/graph/" + quote(gid, safe=""))
    query = """query($id: ID!, $i: Float!) { graph(id: $id) { promptText
        view(minInfluence: $i, topK: 300) { nodes { node kind } edges { weight } } } }"""
    expected = api(base_url, query, id=gid, i=0.0)["graph"]
    assert page.inner_text("#graph-title") == expected["promptText"] == TEXTS[1]
    nodes = page.eval_on_selector_all(
        "#graph-svg circle.node",
        "cs => cs.map(c => ({node: c.dataset.node, kind: c.dataset.kind, y: Number(c.getAttribute('cy'))}))",
    )
    assert sorted(n["node"] for n in nodes) == sorted(n["node"] for n in expected["view"]["nodes"])
    # layered: input tokens at the bottom (largest y), logits on top
    y = {kind: [n["y"] for n in nodes if n["kind"] == kind] for kind in ("TOKEN", "FEATURE", "LOGIT")}
    assert min(y["TOKEN"]) > max(y["FEATURE"]) and min(y["FEATURE"]) > max(y["LOGIT"])
    edges = page.eval_on_selector_all(
        "#graph-svg line.edge", "ls => ls.map(l => [Number(l.dataset.weight), l.classList.contains('pos')])"
    )
    assert len(edges) == len(expected["view"]["edges"]) > 0
    assert all(positive == (weight >= 0) for weight, positive in edges)
    assert {True, False} == {positive for _, positive in edges}

    feature = page.locator('#graph-svg circle[data-kind="FEATURE"]').first
    feature.hover()
    tip = page.inner_text("#tooltip")
    assert page.locator("#tooltip").is_visible() and "activation" in tip and "influence" in tip
    assert "null" not in tip  # absent values are left out, not written
    assert f"key fixtures/plt-relu/{feature.get_attribute('data-node').split('_')[0]}/" in tip

    page.fill("#min-influence", "0.01")
    shown(page, lambda: page.click("#apply-view"), "graph", "graph-pruned")
    pruned = api(base_url, query, id=gid, i=0.01)["graph"]["view"]["nodes"]
    assert page.locator("#graph-svg circle.node").count() == len(pruned) < len(nodes)


def test_feature_page_shows_where_it_recurs_and_its_neighbours(page: Page, base_url: str) -> None:
    planted = SYNTHETIC.circuits[0]
    key = feature_key("synthetic-set", *planted.features[0])
    goto(page, base_url, f"feature/{quote(key, safe='')}", "feature", "feature")
    assert page.inner_text("#feature-key") == key
    query = "query($k: ID!) { feature(key: $k) { graphs(limit: 50) { graphId } } }"
    expected = [g["graphId"] for g in api(base_url, query, k=key)["feature"]["graphs"]]
    assert expected and row_ids(page, "feature-graph-row", "data-graph-id") == expected
    drivers = page.eval_on_selector_all(
        '#neighbours-in [data-testid="neighbour-row"]', "rs => rs.map(r => r.dataset.key)"
    )
    driven = page.eval_on_selector_all(
        '#neighbours-out [data-testid="neighbour-row"]', "rs => rs.map(r => r.dataset.key)"
    )
    assert drivers[0] == f"synthetic/{planted.token}"
    assert driven[0] == feature_key("synthetic-set", *planted.features[1])
    shown(page, lambda: page.locator('[data-testid="feature-graph-row"] a').first.click(), "graph")
    assert page.url.endswith("#/graph/" + quote(expected[0], safe=""))


def test_subcircuits_ranked_with_their_prompts(page: Page, base_url: str) -> None:
    goto(page, base_url, "subcircuits", "subcircuits", "subcircuits")
    cards = page.eval_on_selector_all(
        '[data-testid="subcircuit"]',
        """cs => cs.map(c => ({rank: Number(c.dataset.rank), support: Number(c.dataset.support),
            occurrences: c.querySelectorAll('[data-testid="occurrence"]').length}))""",
    )
    ranked = api(base_url, "{ subcircuits(first: 20) { edges { node { rank support } } } }")["subcircuits"]
    assert len(cards) >= 2
    assert [(c["rank"], c["support"]) for c in cards] == [
        (e["node"]["rank"], e["node"]["support"]) for e in ranked["edges"]
    ]
    assert all(c["occurrences"] == min(c["support"], 25) for c in cards)
    first = page.locator('[data-testid="occurrence"]').first
    target = first.get_attribute("data-graph-id")
    shown(page, lambda: first.locator("a").click(), "graph")
    assert page.url.endswith("#/graph/" + quote(target, safe=""))


def test_compare_two_prompts_marks_shared_features(page: Page, base_url: str) -> None:
    goto(page, base_url, "compare", "compare")
    page.select_option("#compare-mode", "prompts")
    page.select_option("#compare-a", "synthetic-0-0")
    page.select_option("#compare-b", "synthetic-0-2")
    shown(page, lambda: page.click("#compare-run"), "compare", "compare-prompts")
    query = """{ comparePrompts(promptIds: ["synthetic-0-0", "synthetic-0-2"]) {
        features(limit: 100) { key shared } } }"""
    expected = api(base_url, query)["comparePrompts"]["features"]
    rows = page.eval_on_selector_all(
        '[data-testid="compare-feature"]',
        "rs => rs.map(r => ({key: r.dataset.key, shared: r.dataset.shared === 'true', cls: r.className}))",
    )
    assert [r["key"] for r in rows] == [f["key"] for f in expected]
    assert [r["shared"] for r in rows] == [f["shared"] for f in expected]
    assert all((r["cls"] == "shared") == r["shared"] for r in rows)
    # both prompts use the capitals circuit's input feature (the second one is broken after it)
    shared = {r["key"] for r in rows if r["shared"]}
    assert feature_key("synthetic-set", *SYNTHETIC.circuits[0].features[0]) in shared
    assert any(r["cls"] == "only-a" for r in rows) and any(r["cls"] == "only-b" for r in rows)


def test_compare_prompt_sets(page: Page, base_url: str) -> None:
    goto(page, base_url, "compare", "compare")
    page.select_option("#compare-mode", "sets")
    page.select_option("#compare-split", "correct")
    shown(page, lambda: page.click("#compare-run"), "compare", "compare-correct")
    out = api(base_url, '{ compareSets(sides: {split: "correct"}, limit: 50) { nA nB features { key } } }')
    summary = page.inner_text("#compare-summary")
    assert (
        f"({out['compareSets']['nA']} graphs)" in summary
        and f"({out['compareSets']['nB']} graphs)" in summary
    )
    keys = row_ids(page, "compare-feature", "data-key")
    assert keys == [f["key"] for f in out["compareSets"]["features"]]

    page.select_option("#compare-split", "tags")
    page.select_option("#compare-a-tag", "capitals")
    page.select_option("#compare-b-tag", "arithmetic")
    shown(page, lambda: page.click("#compare-run"), "compare", "compare-tags")
    only_a = row_ids(page, "unique-feature", "data-key")
    capitals = {feature_key("synthetic-set", *f) for f in SYNTHETIC.circuits[0].features}
    assert capitals & set(only_a)


def _intervention_shown(page: Page) -> dict[str, list[tuple[int, float]]]:
    """Run the picked intervention; the (token id, probability) rows shown before and after."""
    page.evaluate("document.getElementById('intervene-result').removeAttribute('data-state')")
    page.click("#intervene-run")
    page.wait_for_selector('#intervene-result[data-state="done"]', timeout=30_000)
    return {
        side: page.eval_on_selector_all(
            f'#intervene-{side} [data-testid="intervene-top-row"]',
            "rs => rs.map(r => [Number(r.dataset.tokenId), Number(r.dataset.prob)])",
        )
        for side in ("before", "after")
    }


def _same_as(shown_rows: dict[str, list[tuple[int, float]]], expected: Reference) -> None:
    for side, (ids, probs) in (("before", expected.top_before), ("after", expected.top_after)):
        assert [token for token, _ in shown_rows[side]] == ids
        assert_close(torch.tensor([p for _, p in shown_rows[side]]), torch.tensor(probs), rel=1e-5)
    assert shown_rows["before"] != shown_rows["after"]


def test_graph_page_ablation_shows_the_python_functions_before_and_after(page: Page, base_url: str) -> None:
    gid = graph_id("fixtures/plt-relu", "p0")
    goto(page, base_url, f"graph/{quote(gid, safe='')}", "graph")
    query = """query($id: ID!) { graph(id: $id) { promptText view(minInfluence: 0, topK: 1) {
        nodes { node kind layer position featureIndex influence } } } }"""
    graph = api(base_url, query, id=gid)["graph"]
    features = [n for n in graph["view"]["nodes"] if n["kind"] == "FEATURE"]
    strongest = sorted(features, key=lambda n: -n["influence"])[:2]
    page.check("#pick-mode")
    for n in strongest:
        page.click(f'#graph-svg circle[data-node="{n["node"]}"]')
    assert row_ids(page, "intervene-pick", "data-node") == [n["node"] for n in strongest]
    assert page.locator("#graph-svg circle.picked").count() == 2
    assert page.url.endswith("#/graph/" + quote(gid, safe=""))  # picking does not open the feature page

    ablated = _intervention_shown(page)  # both zeroed, attention frozen (the defaults)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "graph-intervention.png", full_page=True)
    changes = [
        FeatureIntervention(n["layer"], n["position"], n["featureIndex"], value=0.0) for n in strongest
    ]
    text = graph["promptText"]
    _same_as(ablated, reference(*TINY, text, changes, freeze_attention=True, top=5))
    assert page.locator('[data-testid="intervene-change"]').count() == len(
        {token for token, _ in ablated["before"] + ablated["after"]}
    )

    # scale the first pick by 3 instead, with attention free
    first = page.locator('[data-testid="intervene-pick"]').first
    first.locator(".pick-op").select_option("scale")
    first.locator(".pick-amount").fill("3")
    page.select_option("#intervene-attention", "free")
    scaled = _intervention_shown(page)
    top = strongest[0]
    changes[0] = FeatureIntervention(top["layer"], top["position"], top["featureIndex"], scale=3.0)
    _same_as(scaled, reference(*TINY, text, changes, freeze_attention=False, top=5))


def test_subcircuit_list_reads_as_token_text_and_labels(page: Page, base_url: str) -> None:
    goto(page, base_url, "subcircuits", "subcircuits", "subcircuits-words")
    query = "{ subcircuits(first: 20) { edges { node { key sentence edges { sourceText targetText } } } } }"
    expected = [e["node"] for e in api(base_url, query)["subcircuits"]["edges"]]
    shown_sentences = page.eval_on_selector_all(
        '[data-testid="subcircuit-sentence"]', "ps => ps.map(p => p.textContent)"
    )
    assert shown_sentences == [s["sentence"] for s in expected]
    edges = page.eval_on_selector_all('[data-testid="subcircuit-edge"]', "ls => ls.map(l => l.textContent)")
    assert edges == [f"{e['sourceText']} → {e['targetText']}" for s in expected for e in s["edges"]]
    text = page.inner_text("#subcircuit-list")
    assert "synthetic/" not in text and "synthetic-set/" not in text and "token " not in text
    assert f"“{LABEL}”" in text and '"tok1" → L0 #7' in text  # the planted circuit: token text, its label


def test_graph_view_labels_its_strongest_nodes_in_place(page: Page, base_url: str) -> None:
    gid = graph_id("synthetic-set", "synthetic-0-0")
    goto(page, base_url, f"graph/{quote(gid, safe='')}", "graph", "graph-labels")
    query = """query($id: ID!) { graph(id: $id) { view(minInfluence: 0, topK: 300) {
        nodes { node kind influence feature { description } } } } }"""
    nodes = api(base_url, query, id=gid)["graph"]["view"]["nodes"]
    features = sorted((n for n in nodes if n["kind"] == "FEATURE"), key=lambda n: -abs(n["influence"]))
    labels = page.locator('[data-testid="node-label"]')
    assert page.locator("#tooltip").is_hidden()  # nothing hovered
    shown_labels = labels.evaluate_all("ls => ls.map(l => [l.dataset.node, l.textContent])")
    strongest = features[:12]
    described = {n["node"]: n["feature"]["description"] for n in strongest}
    assert sorted(node for node, _ in shown_labels) == sorted(described)
    for node, text in shown_labels:  # the feature in words, a long one cut short with an ellipsis
        assert text == described[node] or (text.endswith("…") and described[node].startswith(text[:-1]))
    assert all(labels.nth(i).is_visible() for i in range(labels.count()))
    planted = f"{LABELLED[0]}_{LABELLED[1]}_{SYNTHETIC.n_positions - 1}"
    assert [planted, f"L0 #7 “{LABEL}”"] in shown_labels


def test_compare_opens_on_right_vs_wrong_with_rows_linking_to_graphs(page: Page, base_url: str) -> None:
    goto(page, base_url, "compare", "compare", "compare-default")
    assert page.url.endswith("#/compare?split=correct")
    assert "right vs wrong" in page.inner_text("#compare-default")
    out = api(
        base_url,
        """{ compareSets(sides: {split: "correct"}, limit: 50) {
               nA nB features { key feature { description } } }
             right: graphs(filter: {correct: true}, first: 50) { totalCount edges { node { id } } }
             wrong: graphs(filter: {correct: false}, first: 50) { totalCount edges { node { id } } } }""",
    )
    summary = page.inner_text("#compare-summary")
    assert f"A = correct ({out['compareSets']['nA']} graphs)" in summary
    features = out["compareSets"]["features"]
    assert features and row_ids(page, "compare-feature", "data-key") == [f["key"] for f in features]
    first = page.locator('[data-testid="compare-feature"]').first
    assert first.locator("td").first.inner_text() == features[0]["feature"]["description"]
    for side, name in (("a", "right"), ("b", "wrong")):
        rows = page.eval_on_selector_all(
            f'#side-graphs-{side} [data-testid="side-graph"]', "rs => rs.map(r => r.dataset.graphId)"
        )
        assert rows == [e["node"]["id"] for e in out[name]["edges"]] and rows
    # a count links to that side's prompts keeping the feature, a side's row to its graph
    shown(page, lambda: first.locator('[data-testid="side-link"]').first.click(), "prompts")
    assert "correct=true" in page.url and "feature=" in page.url
    goto(page, base_url, "compare", "compare")
    target = page.locator('#side-graphs-b [data-testid="side-graph"]').first
    gid = target.get_attribute("data-graph-id")
    shown(page, lambda: target.locator("a").click(), "graph")
    assert page.url.endswith("#/graph/" + quote(gid, safe=""))


# ---------------------------------------------------------------------------------------- the subgraph tools

VIEW_QUERY = """query($id: ID!) { graph(id: $id) { view(minInfluence: 0, topK: 300) {
    nodes { node kind influence probability text feature { key } } edges { source target weight } } } }"""


def influence_kept(nodes: list[dict], share: float) -> set[str]:
    """The nodes the page shows at `share`: features and errors, strongest first, while the influence before
    each is under `share` of their total; every token and logit."""
    ranked = sorted(
        (
            (abs(n["influence"] or 0.0), i, n["node"])
            for i, n in enumerate(nodes)
            if n["kind"] in ("FEATURE", "ERROR")
        ),
        key=lambda r: (-r[0], r[1]),
    )
    total, before, kept = (
        sum(r[0] for r in ranked),
        0.0,
        {n["node"] for n in nodes if n["kind"] in ("TOKEN", "LOGIT")},
    )
    for influence, _, node in ranked:
        if before < share * total:
            kept.add(node)
        before += influence
    return kept


def strongest_paths(
    start: str, nodes: list[dict], edges: list[dict], k: int = 3
) -> list[tuple[float, list[str]]]:
    """Every path from `start` to a logit, by enumeration, scored as the page states (the product of each
    edge's share of its target's summed |weight|, times the logit's probability); the `k` strongest."""
    into: dict[str, float] = defaultdict(float)
    out: dict[str, list[dict]] = defaultdict(list)
    for e in edges:
        into[e["target"]] += abs(e["weight"])
        out[e["source"]].append(e)
    probability = {n["node"]: n["probability"] for n in nodes if n["kind"] == "LOGIT"}
    found: list[tuple[float, list[str]]] = []

    def walk(path: list[str], score: float) -> None:
        if path[-1] in probability:
            found.append((score * probability[path[-1]], path))
        for e in out[path[-1]]:
            walk([*path, e["target"]], score * abs(e["weight"]) / into[e["target"]])

    walk([start], 1.0)
    return sorted((f for f in found if len(f[1]) > 1), key=lambda f: -f[0])[:k]


def visible(page: Page, what: str, attributes: tuple[str, ...]) -> list[tuple[str, ...]]:
    """`attributes` of the SVG elements `what` that are not hidden, in drawing order."""
    script = f"es => es.map(e => [{', '.join(f'e.dataset.{a}' for a in attributes)}])"
    return [tuple(r) for r in page.eval_on_selector_all(f"#graph-svg {what}:not([hidden])", script)]


def test_graph_page_filters_by_influence_and_traces_paths_to_the_logits(page: Page, base_url: str) -> None:
    gid = graph_id("fixtures/plt-relu", "p0")
    goto(page, base_url, f"graph/{quote(gid, safe='')}", "graph")
    view = api(base_url, VIEW_QUERY, id=gid)["graph"]["view"]
    nodes, edges = view["nodes"], view["edges"]
    assert len(visible(page, "circle.node", ("node",))) == len(nodes)

    page.fill("#influence-keep", "50")
    kept = influence_kept(nodes, 0.5)
    shown_edges = [e for e in edges if e["source"] in kept and e["target"] in kept]
    assert {n for (n,) in visible(page, "circle.node", ("node",))} == kept
    assert {(s, t) for s, t in visible(page, "line.edge", ("source", "target"))} == {
        (e["source"], e["target"]) for e in shown_edges
    }
    assert page.inner_text("#shown-counts") == f"{len(kept)} nodes, {len(shown_edges)} edges"
    assert len(kept) < len(nodes) and "keep=0.5" in page.url

    features = sorted(
        (n for n in nodes if n["kind"] == "FEATURE" and n["node"] in kept), key=lambda n: -n["influence"]
    )
    start = features[0]["node"]
    page.click(f'#graph-svg circle[data-node="{start}"]')
    expected = strongest_paths(start, [n for n in nodes if n["node"] in kept], shown_edges)
    paths = page.eval_on_selector_all(
        '[data-testid="selected-path"]', "ls => ls.map(l => [Number(l.dataset.score), l.dataset.nodes])"
    )
    assert expected and [p for _, p in paths] == [",".join(p) for _, p in expected]
    assert_close(torch.tensor([s for s, _ in paths]), torch.tensor([s for s, _ in expected]), rel=1e-9)
    words = {n["node"]: n["text"] for n in nodes}
    first = page.locator('[data-testid="selected-path"]').first.inner_text()
    assert first.startswith(" → ".join(words[n] for n in expected[0][1]))
    on_path = {(s, t) for _, p in expected for s, t in itertools.pairwise(p)}
    assert set(visible(page, "line.edge.on-path", ("source", "target"))) == on_path
    assert page.get_attribute("#selected-node", "data-node") == start
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "graph-paths.png", full_page=True)

    # the state lives in the URL: opening it again shows the same nodes and paths
    shown(page, page.reload, "graph")
    assert {n for (n,) in visible(page, "circle.node", ("node",))} == kept
    assert page.locator('[data-testid="selected-path"]').count() == len(expected)


def _feature_nodes(base_url: str, gid: str, *features: tuple[int, int]) -> list[dict]:
    """The nodes of graph `gid` that are instances of the planted `features`, in that order."""
    nodes = api(base_url, VIEW_QUERY, id=gid)["graph"]["view"]["nodes"]
    keys = [planted_key(f) for f in features]
    return sorted(
        (n for n in nodes if (n["feature"] or {}).get("key") in keys),
        key=lambda n: keys.index(n["feature"]["key"]),
    )


def test_pinned_features_group_into_a_supernode_saved_through_the_api(
    page: Page, base_url: str, api_key: str
) -> None:
    gid = graph_id("synthetic-set", "synthetic-0-4")
    goto(page, base_url, f"graph/{quote(gid, safe='')}", "graph")
    page.evaluate("sessionStorage.clear()")
    pins = _feature_nodes(base_url, gid, LABELLED, LENS_ONLY)
    assert len(pins) == 2
    for n in pins:
        page.click(f'#graph-svg circle[data-node="{n["node"]}"]', modifiers=["Shift"])
    rows = page.eval_on_selector_all(
        '[data-testid="pinned-node"]', "rs => rs.map(r => [r.dataset.node, r.cells[0].textContent])"
    )
    assert rows == [[n["node"], n["text"]] for n in pins]
    assert f"“{LABEL}”" in rows[0][1] and page.locator("#graph-svg circle.pinned").count() == 2
    assert (
        "pinned=" in page.url and page.locator('[data-testid="selected-node"]').count() == 0
    )  # pinning selects nothing

    def save(expected_state: str) -> str:
        page.evaluate("document.getElementById('supernode-message').removeAttribute('data-state')")
        page.click("#supernode-save")
        page.wait_for_selector(f'#supernode-message[data-state="{expected_state}"]', timeout=15_000)
        return page.inner_text("#supernode-message")

    page.fill("#supernode-name", "capital pair")
    assert "needs an API key" in save("need-key")
    page.fill("#api-key", "cbk_000000000000_not-a-key-that-exists-here")
    assert "refused" in save("error") and "invalid or revoked" in page.inner_text("#supernode-message")
    assert page.evaluate("sessionStorage.getItem('circuitbase.apiKey')") is None
    page.fill("#api-key", api_key)
    assert save("saved") == "Saved supernode “capital pair” with 2 features."
    assert page.evaluate("sessionStorage.getItem('circuitbase.apiKey')") == api_key  # asked once per tab
    assert page.locator("#api-key-row").is_hidden()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "graph-subgraph.png", full_page=True)

    keys = sorted(planted_key(f) for f in (LABELLED, LENS_ONLY))
    out = api(base_url, "{ supernodes(limit: 100) { key name algorithm members } }")["supernodes"]
    assert {
        "key": "manual-capital pair",
        "name": "capital pair",
        "algorithm": "manual",
        "members": keys,
    } in out
    group = page.locator('[data-testid="view-supernode"][data-key="manual-capital pair"]')
    assert group.get_attribute("data-nodes") == ",".join(n["node"] for n in pins)
    # a fresh page of another graph keeping these features lists the group too
    other = graph_id("synthetic-set", "synthetic-0-0")
    goto(page, base_url, f"graph/{quote(other, safe='')}", "graph")
    members = [n["node"] for n in _feature_nodes(base_url, other, LABELLED, LENS_ONLY)]
    assert page.get_attribute(
        '[data-testid="view-supernode"][data-key="manual-capital pair"]', "data-nodes"
    ) == ",".join(members)


def test_the_view_opens_as_circuit_tracer_json_of_the_nodes_shown(
    page: Page, base_url: str, api_key: str
) -> None:
    gid = graph_id("synthetic-set", "synthetic-0-6")
    pins = _feature_nodes(base_url, gid, LABELLED, LENS_ONLY)
    define = 'mutation($f: [ID!]!) { defineSupernode(name: "exported", features: $f) { key } }'
    api(base_url, define, api_key, f=[n["feature"]["key"] for n in pins])
    pinned = ",".join(n["node"] for n in pins)
    goto(
        page,
        base_url,
        f"graph/{quote(gid, safe='')}?keep=0.3&pinned={pinned}&clicked={pins[0]['node']}",
        "graph",
    )
    with page.expect_popup() as popup:
        page.click("#export-json")
    popup.value.close()
    page.wait_for_selector('#export-status[data-state="done"]', timeout=15_000)
    doc = json.loads(
        page.evaluate("async () => await (await fetch(document.getElementById('export-link').href)).text()")
    )
    shown_nodes = [n for (n,) in visible(page, "circle.node", ("node",))]
    view = api(base_url, VIEW_QUERY, id=gid)["graph"]["view"]
    assert [n["node_id"] for n in doc["nodes"]] == shown_nodes
    assert len(shown_nodes) < len(view["nodes"])  # the filter hid some
    assert set(shown_nodes) == influence_kept(view["nodes"], 0.3) | {n["node"] for n in pins}
    shown_edges = [(s, t, float(w)) for s, t, w in visible(page, "line.edge", ("source", "target", "weight"))]
    assert [(e["source"], e["target"], e["weight"]) for e in doc["links"]] == shown_edges
    assert doc["qParams"]["pinnedIds"] == [n["node"] for n in pins]
    assert doc["qParams"]["clickedId"] == pins[0]["node"]
    assert ["exported", *[n["node"] for n in pins]] in doc["qParams"]["supernodes"]
    assert doc["metadata"]["slug"] == "synthetic-0-6" and doc["metadata"]["transcoder_list"] == [
        "synthetic-set"
    ]
    assert page.get_attribute("#export-link", "download") == "synthetic-0-6.json"


def test_feature_page_lists_contexts_graphs_and_subcircuits(page: Page, base_url: str) -> None:
    key = planted_key(LABELLED)
    goto(page, base_url, f"feature/{quote(key, safe='')}", "feature", "feature-contexts")
    contexts = page.eval_on_selector_all(
        '[data-testid="feature-context"]',
        "ls => ls.map(l => [l.textContent, l.querySelector('mark').textContent])",
    )
    # each context with its marked token highlighted, then its activation
    assert [(text.split(" (activation ")[0], marked) for text, marked in contexts] == [
        (c.render(mark=("", "")), c.tokens[c.at].strip()) for c in CONTEXTS
    ]
    shown_acts = [float(text.split(" (activation ")[1].rstrip(")")) for text, _ in contexts]
    assert_close(torch.tensor(shown_acts), torch.tensor([c.act for c in CONTEXTS]), rel=1e-3)
    query = """query($k: ID!) { feature(key: $k) {
        graphs(limit: 100) { graphId } subcircuits(limit: 100) { key } } }"""
    expected = api(base_url, query, k=key)["feature"]
    assert row_ids(page, "feature-graph-row", "data-graph-id") == [g["graphId"] for g in expected["graphs"]]
    assert row_ids(page, "feature-subcircuit", "data-key") == [s["key"] for s in expected["subcircuits"]]
    assert expected["subcircuits"]
    target = expected["subcircuits"][0]["key"]
    shown(
        page,
        lambda: page.locator('[data-testid="feature-subcircuit"] a').first.click(),
        "subcircuit",
        "subcircuit",
    )
    assert row_ids(page, "subcircuit", "data-key") == [target]
    assert page.url.endswith("#/subcircuit/" + quote(target, safe=""))
    goto(page, base_url, f"feature/{quote(key, safe='')}", "feature")
    shown(page, lambda: page.click("#feature-prompts"), "prompts")
    every = api(
        base_url,
        "query($k: ID!) { prompts(filter: {feature: $k}, first: 100) { edges { node { id } } } }",
        k=key,
    )
    assert row_ids(page, "prompt-row", "data-prompt-id") == [
        e["node"]["id"] for e in every["prompts"]["edges"]
    ]


@pytest.mark.parametrize(
    ("route", "held_query"),
    [
        (f"graph/{quote(graph_id('fixtures/plt-relu', 'p1'), safe='')}", "graph(id:"),
        ("compare", "prompts(filter:"),  # the default sides rewrite the URL once the prompts are in
    ],
)
def test_leaving_a_page_before_it_loads_keeps_the_new_url(
    page: Page, base_url: str, route: str, held_query: str
) -> None:
    """The page's answer is held until the user has moved on; when it lands, the URL stays put."""
    page.goto(f"{base_url}/?fresh#/subcircuits")  # a new document: nothing loaded or cached yet
    page.wait_for_selector('#view[data-ready="subcircuits"]', timeout=15_000)
    held = []

    def hold(request_route: Route) -> None:
        if held_query in (request_route.request.post_data or ""):
            held.append(request_route)
        else:
            request_route.continue_()

    page.route("**/graphql", hold)
    try:
        page.evaluate(f"location.hash = '#/{route}'")
        for _ in range(200):
            if held:
                break
            page.wait_for_timeout(25)
        assert held, f"the {route} page never asked for its data"
        shown(page, lambda: page.evaluate("location.hash = '#/subcircuits'"), "subcircuits")
        for request_route in held:
            request_route.continue_()
        page.wait_for_timeout(1_000)  # the answer lands and its page is dropped
        assert page.url.endswith("#/subcircuits")
        assert page.locator('#view[data-ready="subcircuits"]').count() == 1
    finally:
        page.unroute("**/graphql")
