"""Subcircuits on the toy demo's data in a real headless Chromium: the list and a subcircuit's page show
the causal support and drops the causal step stored, and "Ablate in this graph" shows the top tokens the
Python intervention function gives with the graph's member feature nodes zeroed, and whether the answer
flips (tests/browser.py: the server, Chromium and the steps)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import neo4j
import pytest
import torch
from playwright.sync_api import Locator, Page

from circuitbase.api.app import ApiConfig, create_app
from circuitbase.api.limits import Limits
from circuitbase.engine import toy
from circuitbase.engine.ablation import lead
from circuitbase.engine.interventions import FeatureIntervention
from tests.browser import SCREENSHOTS, api, browser_page, goto, serve
from tests.intervention_reference import reference
from tests.numerics import assert_close

pytest_plugins = ["tests.toy_demo_data"]  # the toy_demo fixture
pytestmark = pytest.mark.neo4j

STORED = """
MATCH (s:Subcircuit)-[o:OCCURS_IN]->(g:Graph)
RETURN s.key AS key, s.rank AS rank, s.causal_support AS support, s.causal_occurrences AS measured,
       collect([g.id, o.causal_drop, o.causal_logit_drop]) AS occurrences
ORDER BY rank
"""
MEMBER_FEATURES = "MATCH (:Subcircuit {key: $key})-[:HAS_MEMBER]->(f:Feature) RETURN collect(f.key) AS keys"
SUBCIRCUIT_MEMBERS = """query($subcircuit: ID!) {
  subcircuit(key: $subcircuit) { occurrences { graphId memberNodes { layer } } } }"""
VIEW = """query($id: ID!) { graph(id: $id) { promptText view(minInfluence: 0, topK: 1) {
  nodes { kind layer position featureIndex feature { key } } } } }"""


@pytest.fixture(scope="module")
def base_url(toy_demo: neo4j.Driver) -> Iterator[str]:
    """A real uvicorn server on the toy demo's data; interventions run the shipped toy model on the CPU."""
    yield from serve(create_app(config=ApiConfig(intervention_device="cpu"), driver=toy_demo))


@pytest.fixture(scope="module")
def page(base_url: str) -> Iterator[Page]:
    yield from browser_page(base_url)


@pytest.fixture(scope="module")
def stored(toy_demo: neo4j.Driver) -> list[dict]:
    """Every subcircuit by rank with its causal support and its occurrences' [graph, drop, logit drop]."""
    return [r.data() for r in toy_demo.execute_query(STORED).records]


def _number(text: str, after: str) -> float:
    """The number written right after `after` in `text`."""
    return float(text.split(after, 1)[1].split()[0])


def _over(measured: int) -> str:
    return f" over {measured} occurrence{'' if measured == 1 else 's'}"


def test_subcircuit_list_shows_causal_support_and_drops(
    page: Page, base_url: str, stored: list[dict]
) -> None:
    goto(page, base_url, "subcircuits", "subcircuits", "subcircuits-causal")
    cards = page.eval_on_selector_all(
        '[data-testid="subcircuit"]',
        """cs => cs.map(c => ({key: c.dataset.key,
            support: c.querySelector('[data-testid="causal-support"]').textContent,
            occurrences: [...c.querySelectorAll('[data-testid="occurrence"]')].map(o =>
                [o.dataset.graphId, o.querySelector('[data-testid="causal-drop"]').textContent])}))""",
    )
    assert [c["key"] for c in cards] == [s["key"] for s in stored[:20]]
    for card, s in zip(cards, stored, strict=False):
        assert card["support"].endswith(_over(s["measured"]))
        assert abs(_number(card["support"], "causal support ") - s["support"]) <= 0.005
        drops = {graph: (drop, logit) for graph, drop, logit in s["occurrences"]}
        assert {graph for graph, _ in card["occurrences"]} == set(drops)
        for graph, text in card["occurrences"]:
            drop, logit = drops[graph]
            assert abs(_number(text, "causal drop ") - drop) <= 0.005
            assert text.endswith(" logits)") and abs(_number(text, "(") - logit) <= 0.005
    assert page.locator('[data-testid="ablate"]').count() == 0  # the list runs no model


def _ablated(item: Locator) -> dict[str, list[tuple[int, float, str]]]:
    """Click the occurrence's "Ablate in this graph"; the (token id, probability, text) rows shown before
    and after."""
    item.get_by_role("button", name="Ablate in this graph").click()
    item.locator('[data-testid="ablate-result"][data-state="done"]').wait_for(timeout=30_000)
    return {
        side: item.locator(f'[data-side="{side}"] [data-testid="intervene-top-row"]').evaluate_all(
            "rs => rs.map(r => [Number(r.dataset.tokenId), Number(r.dataset.prob), "
            "JSON.parse(r.cells[1].textContent)])"
        )
        for side in ("before", "after")
    }


def test_ablate_in_this_graph_shows_the_python_functions_answer(
    page: Page, base_url: str, stored: list[dict], toy_demo: neo4j.Driver
) -> None:
    # the best-ranked subcircuit of causal support >= 0.5 whose ablation flips one graph's answer and keeps
    # another's: its largest and its smallest drop
    chosen = next(
        s
        for s in stored
        if (s["support"] or 0.0) >= 0.5
        and min(o[1] for o in s["occurrences"]) < 1.0 < max(o[1] for o in s["occurrences"])
    )
    by_drop = sorted(chosen["occurrences"], key=lambda o: o[1])
    goto(page, base_url, f"subcircuit/{quote(chosen['key'], safe='')}", "subcircuit")
    shown_support = page.inner_text('[data-testid="causal-support"]')
    assert shown_support.endswith(_over(chosen["measured"]))
    assert page.locator('[data-testid="ablate"]').count() == len(chosen["occurrences"])
    assert "attention free" in page.inner_text("#ablate-help")  # as the causal step ran (its default)

    model_dir, set_dir = toy.shipped_paths()
    [members] = toy_demo.execute_query(MEMBER_FEATURES, key=chosen["key"]).records
    for graph, drop, logit_drop in (by_drop[-1], by_drop[0]):
        item = page.locator(f'[data-testid="occurrence"][data-graph-id="{graph}"]')
        rows = _ablated(item)
        # the same features, found here from the graph's nodes: every kept instance of a member feature
        view = api(base_url, VIEW, id=graph)["graph"]
        changes = [
            FeatureIntervention(n["layer"], n["position"], n["featureIndex"], value=0.0)
            for n in view["view"]["nodes"]
            if n["kind"] == "FEATURE" and n["feature"]["key"] in members["keys"]
        ]
        assert changes
        expected = reference(model_dir, set_dir, view["promptText"], changes, freeze_attention=False, top=5)
        for side, (ids, probs) in (("before", expected.top_before), ("after", expected.top_after)):
            assert [token for token, _, _ in rows[side]] == ids
            assert_close(torch.tensor([p for _, p, _ in rows[side]]), torch.tensor(probs), rel=1e-5)

        # the verdict: the answer flips exactly when the ablation took more than the answer's lead, and
        # the lead it took is the drop the causal step stored
        answer = expected.top_before[0][0]
        flips = expected.top_after[0][0] != answer
        taken = lead(expected.before, answer) - lead(expected.after, answer)
        assert_close(torch.tensor([taken]), torch.tensor([logit_drop]), rel=1e-4)
        assert flips == (drop > 1.0)
        verdict = item.locator('[data-testid="answer-verdict"]')
        before, after = (json.dumps(rows[side][0][2], ensure_ascii=False) for side in ("before", "after"))
        assert verdict.get_attribute("data-flips") == str(flips).lower()
        assert verdict.inner_text() == (
            f"answer flips: {before} → {after}" if flips else f"answer holds: {before}"
        )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "subcircuit-ablation.png", full_page=True)


@pytest.fixture
def one_feature_url(toy_demo: neo4j.Driver) -> Iterator[str]:
    """A server that changes at most one feature at once."""
    config = ApiConfig(intervention_device="cpu", limits=Limits(max_intervention_features=1))
    yield from serve(create_app(config=config, driver=toy_demo))


def test_ablate_is_disabled_past_the_servers_feature_limit(
    page: Page, one_feature_url: str, stored: list[dict]
) -> None:
    def member_counts(key: str) -> dict[str, int]:
        found = api(one_feature_url, SUBCIRCUIT_MEMBERS, subcircuit=key)["subcircuit"]["occurrences"]
        return {o["graphId"]: len(o["memberNodes"]) for o in found}

    # the best-ranked subcircuit with an occurrence of two or more member nodes
    key, counts = next((s["key"], c) for s in stored if max((c := member_counts(s["key"])).values()) > 1)
    # the module's browser (one Playwright per thread), on this second server
    goto(page, one_feature_url, f"subcircuit/{quote(key, safe='')}", "subcircuit")
    shown = page.locator('[data-testid="ablate"]').evaluate_all(
        "bs => bs.map(b => [b.closest('[data-testid=occurrence]').dataset.graphId, b.disabled, b.title])"
    )
    assert {graph for graph, _, _ in shown} == {graph for graph, n in counts.items() if n}
    for graph, disabled, title in shown:
        assert disabled == (counts[graph] > 1)
        if disabled:
            assert title == f"{counts[graph]} feature nodes here; this server changes at most 1 at once"
