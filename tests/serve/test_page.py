"""The web page in a real headless browser (Chromium, driven by Playwright): type a task, watch
each role's lane fill, the final answer highlighted, the route drawn for a routing team."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


@pytest.fixture
def page():
    sync = pytest.importorskip("playwright.sync_api")
    with sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser.new_page(viewport={"width": 1100, "height": 640})
        browser.close()


def ask(page, url: str, task: str) -> None:
    page.goto(url)
    page.wait_for_selector(".lane")
    page.fill("#task", task)
    page.click("#send")
    page.wait_for_selector("#answer", state="visible", timeout=60_000)


def test_page_runs_the_team(demo_run, serve, page):
    server = serve(str(demo_run), "--set", "run.progress=false")
    ask(page, server.url, "secret red")
    lanes = page.eval_on_selector_all(".lane", "ls => ls.map(l => l.dataset.role)")
    assert lanes == ["speaker", "listener"]
    speaker = page.locator('.lane[data-role="speaker"] .msg')
    listener = page.locator('.lane[data-role="listener"] .msg')
    assert speaker.count() == 1 and listener.count() == 1
    answer = page.text_content("#answer-text")
    assert answer and answer in listener.first.text_content()
    assert page.eval_on_selector_all("#route .hop", "hs => hs.map(h => h.textContent)") == [
        "speaker",
        "listener",
    ]
    shot = os.environ.get("MARFT_PAGE_SCREENSHOT")  # docs/serving.md's picture
    if shot:
        page.screenshot(path=shot, full_page=True)


def test_page_draws_a_routing_teams_route(serve, page):
    server = serve("routing", "--base", "--set", "run.progress=false")
    ask(page, server.url, "which expert knows the secret? alpha")
    hops = page.eval_on_selector_all("#route .hop", "hs => hs.map(h => h.textContent)")
    assert hops[0] == "router" and len(hops) >= 2
    assert page.locator('.lane[data-role="router"] .msg').count() >= 1


def test_page_asks_for_the_key(serve, page):
    server = serve("demo", "--base", env={"MARFT_API_KEY": "sekret"})
    page.goto(server.url)
    page.wait_for_selector("#key-row", state="visible")
    page.fill("#key", "sekret")
    page.fill("#task", "secret blue")
    page.click("#send")
    page.wait_for_selector("#answer", state="visible", timeout=60_000)
