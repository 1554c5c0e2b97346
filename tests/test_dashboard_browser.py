"""The page of `plan serve` in a real browser (headless Chromium driven by playwright; CI step
`bash tests/browser/install.sh && pytest -m browser`): it loads, the best plan for Llama-3.1-70B on 8 DGX
H100 nodes renders with its memory and step-time bars, a click on a point of the Pareto frontier shows that
point's plan, and the launch files download. A screenshot is kept (``PLAN_ARTIFACTS``, else the test's
temporary folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from benchmarks.plan_server import plan_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server():
    with plan_server() as (url, _process):
        yield url


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("chromium is not installed (tests/browser/install.sh installs Debian's)")
    with sync_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


def test_the_page_plans_llama_70b_and_shows_a_chosen_frontier_point(server, browser, tmp_path):
    page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 1600})
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('status').textContent === 'ready'", timeout=30_000)
    page.select_option("#model", "llama-3.1-70b")
    page.select_option("#cluster", "dgx-h100")
    page.fill("#nodes", "8")
    page.click("#solve")
    page.wait_for_function("document.getElementById('status').textContent === 'solving: done'", timeout=60_000)
    headline = page.text_content("#headline")
    assert "tp" in headline and "on 64 GPUs" in headline
    assert page.locator("#memory rect").count() >= 3 and page.locator("#time rect").count() >= 2
    assert page.locator("#why li").count() >= 1

    page.click("#front")
    page.wait_for_function("document.getElementById('status').textContent === 'searching the frontier: done'",
                           timeout=120_000)
    points = page.locator("#scatter circle.point")  # the default frontier: tokens/s, cost and GPUs
    assert points.count() >= 2
    gpu_labels = page.locator("#scatter text.level").all_text_contents()  # each point labelled with its GPUs
    assert len(gpu_labels) == points.count() and all(label.endswith(" GPUs") for label in gpu_labels)
    assert len(set(gpu_labels)) >= 2  # the frontier trades GPUs for throughput
    last = points.count() - 1
    chosen = points.nth(last)
    plan_of_point = chosen.locator("title").text_content().split(": ", 1)[1]
    chosen.click()
    headline = page.text_content("#headline")
    assert headline.startswith(plan_of_point) and f"on {gpu_labels[last].split()[0]} GPUs" in headline
    assert "chosen" in chosen.get_attribute("class")

    page.select_option("#target", "torchrun")
    with page.expect_download(timeout=60_000) as download:
        page.click("#launch")
    assert download.value.suggested_filename in {"launch.sh", "train.sh", "run.sh", "torchrun.sh"} or \
        download.value.suggested_filename.endswith(".sh")
    artifacts = Path(os.environ.get("PLAN_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
    assert (artifacts / "dashboard.png").stat().st_size > 10_000
    assert all(url.startswith(server) or url.startswith("blob:") for url in requested)  # nothing from elsewhere
    page.close()
