"""The web page at ``/``, in a real headless browser: Debian's chromium driven by Playwright.

Submits a prompt, watches the live progress, waits for the images, checks they rendered, and
saves a screenshot to ``test-artifacts/web-page.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from cli.services import Service

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/bootstrap.sh); never a downloaded one
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# Records every change of a job card's status and progress bar, so the test can tell that the
# page showed the job running, step by step, and not only its end.
_RECORD_CHANGES = """
() => {
  window.sdqChanges = [];
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "attributes") {
        window.sdqChanges.push([r.attributeName, r.target.getAttribute(r.attributeName)]);
      }
    }
  }).observe(document.querySelector("#jobs"), {
    subtree: true, attributes: true, attributeFilter: ["data-status", "value"],
  });
}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)  # a job on a busy 2-core machine may take a while
    yield opened
    context.close()


def test_the_page_generates_images_and_shows_them(
    page: Page, api_server: Service, worker: Service, auth_headers: dict[str, str]
) -> None:
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and problems.append(f"console: {msg.text}"))
    key = auth_headers["Authorization"].removeprefix("Bearer ")

    page.goto(api_server.extra["url"] + "/")
    # Without a key the job list is refused; the page opens the key box instead of failing.
    expect(page.locator("#key-box")).to_have_attribute("open", "")
    problems.clear()  # the browser logs that 401 to the console
    page.fill("#api-key", key)
    page.dispatch_event("#api-key", "change")
    page.fill("#prompt", "a lighthouse on a cliff at dusk")
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.fill("#steps", "12")
    page.fill("#images", "2")
    page.fill("#seed", "4242")
    page.evaluate(_RECORD_CHANGES)
    page.click("#submit")

    card = page.locator(".job").first
    expect(card).to_have_attribute("data-status", "succeeded")
    images = card.locator(".gallery img")
    expect(images).to_have_count(2)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.job .gallery img')]"
        ".every((img) => img.complete && img.naturalWidth === 64)"
    )
    expect(card.locator(".seed")).to_have_text(["seed 4242", "seed 4243"])
    expect(card.locator(".badge")).to_have_text(["safe", "safe"])
    expect(card.locator(".steps")).to_have_text("step 12/12")
    expect(card.locator("progress")).to_have_attribute("value", "1")
    changes = page.evaluate("window.sdqChanges")
    assert ["data-status", "running"] in changes
    fractions = [float(v) for name, v in changes if name == "value"]
    assert any(0 < f < 1 for f in fractions), changes  # live progress, not only the end

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)

    # Download links point at the images; the files are the PNGs the page shows.
    links = card.locator("a.download")
    srcs = [images.nth(n).get_attribute("src") for n in range(2)]
    assert [links.nth(n).get_attribute("href") for n in range(2)] == srcs
    job_id = card.get_attribute("data-job-id")
    assert links.first.get_attribute("download") == f"{job_id}-0.png"
    fetched = httpx.get(srcs[0], timeout=10)
    assert fetched.headers["content-type"] == "image/png"

    # The key stays in this browser: a reload lists the job again, images included.
    assert page.evaluate("localStorage.getItem('sdq.apiKey')") == key
    page.reload()
    expect(page.locator(f'.job[data-job-id="{job_id}"] .gallery img')).to_have_count(2)
    assert not problems


def test_the_page_shows_a_refused_request(
    page: Page, api_server: Service, auth_headers: dict[str, str]
) -> None:
    page.goto(api_server.extra["url"] + "/")
    page.fill("#api-key", auth_headers["Authorization"].removeprefix("Bearer "))
    page.dispatch_event("#api-key", "change")
    page.fill("#prompt", "too wide")
    page.evaluate("document.querySelector('#width').removeAttribute('max')")
    page.fill("#width", "4096")
    page.click("#submit")

    expect(page.locator("#form-error")).to_contain_text("validation_error: width")
    expect(page.locator(".job .prompt", has_text="too wide")).to_have_count(0)
