"""What the dashboard tests share: a real uvicorn server for an app, a headless Chromium page on it
(Playwright), and the steps every test takes (open a view, wait until it has rendered, read rows, ask the
API). Chromium comes from the OS packages (Debian: `apt-get install chromium`), or CIRCUITBASE_CHROMIUM
names the binary; without it the tests fail. Screenshots go to artifacts/screenshots/<name>.png."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Page, sync_playwright

SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
CHROMIUM_ENV = "CIRCUITBASE_CHROMIUM"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The Chromium binary: $CIRCUITBASE_CHROMIUM, else `chromium` on PATH; a clear failure without one."""
    found = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")
    if not found:
        pytest.fail(
            "the dashboard tests need Chromium: install it from the OS packages "
            f"(Debian: apt-get install -y chromium) or set {CHROMIUM_ENV} to its binary",
            pytrace=False,
        )
    return found


def serve(app: FastAPI) -> Iterator[str]:
    """`app` on a real uvicorn server on a free loopback port, in a thread: yields its base URL, stops it
    after (a fixture's body: `yield from serve(app)`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the dashboard server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def browser_page(base_url: str) -> Iterator[Page]:
    """A headless Chromium page on the dashboard at `base_url`; fails after if the page raised an error (a
    fixture's body: `yield from browser_page(base_url)`)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(base_url + "/")
        yield page
        browser.close()
        assert not errors, errors


def api(base_url: str, query: str, key: str | None = None, **variables: Any) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = httpx.post(f"{base_url}/graphql", json={"query": query, "variables": variables}, headers=headers)
    assert "errors" not in body.json(), body.json()
    return body.json()["data"]


def shown(page: Page, action: Callable[[], object], view: str, screenshot: str | None = None) -> None:
    """Do `action` (a navigation or a click), wait until `view` has rendered without error, screenshot it."""
    page.evaluate("document.getElementById('view').removeAttribute('data-ready')")
    action()
    page.wait_for_selector(f'#view[data-ready="{view}"]', timeout=15_000)
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    if screenshot:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / f"{screenshot}.png", full_page=True)


def goto(page: Page, base_url: str, route: str, view: str, screenshot: str | None = None) -> None:
    """Open `route` (reloading when the page is on it already: the same hash fires no hashchange)."""
    url = f"{base_url}/#/{route}"
    shown(page, lambda: page.reload() if page.url == url else page.goto(url), view, screenshot)


def row_ids(page: Page, testid: str, attribute: str) -> list[str]:
    return page.eval_on_selector_all(
        f'[data-testid="{testid}"]', f"rows => rows.map(r => r.getAttribute('{attribute}'))"
    )
