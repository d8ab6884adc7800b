"""In a real browser (Debian's Chromium, driven by playwright) against the live IIIF stack,
through nginx: what a person or a viewer in a browser does.

- A page of an origin in cors.origins submits a task with its key and polls it; the same page
  on another origin is blocked by CORS.
- Mirador 4.0.0 (from npm, a test tool only) opens a shared manifest URL, no key, from an origin
  the stack does not list, and shows the detections of the canvas.
- Mirador draws a vectorized diagram's SvgSelector paths, and the operator page its primitives.
- The operator page shows a running task's progress moving, draws its boxes, cancels a task
  and hands out a share link that opens in the viewer.

Screenshots go to var/test-artifacts/browser/ (listed at the end of the run). One Chromium
serves the whole session (conftest `browser`); each test has its own browser context.
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import quote

import pytest
import requests

from synthetic import RenderedPage
from testkit import browser as browser_kit
from testkit.iiif_server import IiifServer, Published, Rule, jpeg, v3_canvas, v3_image, v3_manifest
from testkit.stack import Api, Stack

pytestmark = pytest.mark.live

LOW = {"confidence": 0.01}


@pytest.fixture(scope="module")
def admin_key(iiif_stack: Stack) -> str:
    return iiif_stack.create_key("web-admin", "--admin", "--rate", "100000/second")


# --- CORS from a page on another origin ---------------------------------------------------------

SUBMIT_AND_POLL = """async ([api, key, body]) => {
  const headers = {"X-API-Key": key, "Content-Type": "application/json",
                   "Idempotency-Key": crypto.randomUUID()};
  try {
    const created = await fetch(api + "/task", {method: "POST", headers, body});
    const location = created.headers.get("Location");
    const seen = [];
    const ended = ["SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"];
    let state = null;
    for (let i = 0; i < 300 && !ended.includes(state); i++) {
      const polled = await fetch(api + location, {headers: {"Authorization": "Bearer " + key}});
      state = (await polled.json()).state;
      seen.push([polled.status, state, polled.headers.get("Retry-After")]);
      if (polled.status === 202) await new Promise((done) => setTimeout(done, 100));
    }
    return {status: created.status, location, requestId: created.headers.get("X-Request-Id"),
            seen, state};
  } catch (error) {
    return {blocked: String(error)};
  }
}"""


def test_a_page_of_an_allowed_origin_submits_and_polls(
    page, iiif_stack: Stack, iiif_server: IiifServer, iiif_pages, web_origins
) -> None:
    key = iiif_stack.keys["iiif"]
    _, published = iiif_pages[0]
    body = json.dumps({"type": "detect", "input": {"image_urls": [published.full_url]}})
    page.goto(f"{web_origins.allowed}/blank.html")
    done = page.evaluate(SUBMIT_AND_POLL, [iiif_stack.base_url, key, body])
    assert "blocked" not in done, (done, page.problems)
    # Location, Retry-After and X-Request-Id are readable: exposed to the page.
    assert done["status"] == 202 and done["location"].startswith("/status/")
    assert done["requestId"] and done["state"] == "SUCCEEDED", done
    assert done["seen"][-1][:2] == [200, "SUCCEEDED"]
    assert all(retry == "1" for status, _, retry in done["seen"] if status == 202)

    page.goto(f"{web_origins.other}/blank.html")
    refused = page.evaluate(SUBMIT_AND_POLL, [iiif_stack.base_url, key, body])
    assert "blocked" in refused, refused
    assert any("CORS" in p or "Access-Control" in p for p in page.problems), page.problems


# --- Mirador through a share link ---------------------------------------------------------------


def _book(iiif_server: IiifServer, name: str, pages: list[tuple[RenderedPage, Published]]) -> str:
    base = f"{iiif_server.url}/{name}"
    canvases = [
        v3_canvas(f"{base}/canvas/{i}", f"f. {i + 1}", p.width, p.height, v3_image(p))
        for i, (_, p) in enumerate(pages)
    ]
    manifest = v3_manifest(f"{base}/manifest.json", name, canvases)
    return iiif_server.add_json(f"{name}/manifest.json", manifest)


def _annotation_count(page) -> int:
    text = page.locator("text=/Showing \\d+ annotations?/").first.inner_text(timeout=30_000)
    return int(re.search(r"\d+", text).group())


def test_mirador_shows_the_detections_of_a_shared_manifest(
    page, mirador: str, iiif_api: Api, iiif_server: IiifServer, iiif_pages, web_origins
) -> None:
    url = _book(iiif_server, "mirador-book", iiif_pages[:2])
    task_id = iiif_api.submit_ok({"type": "detect", "input": {"manifest_url": url}, "params": LOW})
    body = iiif_api.wait(task_id, timeout_s=180)
    assert body["state"] == "SUCCEEDED", body
    expected = [len(item["detections"]) for item in body["result"]["items"]]
    assert expected[0] > 0 and expected[0] != expected[1], expected

    share = iiif_api.request("POST", f"/result/{task_id}/shares", json={}).json()
    manifest_url = share["manifests"][0]["manifest_url"]
    viewer_manifest = requests.get(manifest_url, timeout=10).json()  # no key needed
    canvas_pages = [c["annotations"][0]["id"] for c in viewer_manifest["items"]]

    # From an origin the stack does not list: a share link is public by design.
    for canvas, count in enumerate(expected):
        page.goto(f"{web_origins.other}/{mirador}?manifest={quote(manifest_url)}&canvas={canvas}")
        assert _annotation_count(page) == count, page.problems
        listed = page.locator(".mirador-window-sidebar-annotation-panel [role=menuitem]")
        assert listed.count() == count
        own = requests.get(canvas_pages[canvas], timeout=10).json()["items"]
        assert [e.get_attribute("annotationid") for e in listed.all()] == [a["id"] for a in own]
        for entry in listed.all():  # the label a tag chip, the confidence text
            assert entry.locator(".MuiChip-label").inner_text() == "illustration"
            assert re.fullmatch(r"confidence 0\.\d\d", entry.locator("p").first.inner_text())
    page.wait_for_load_state("networkidle")
    time.sleep(3)  # let OpenSeadragon finish its zoom animation before the picture is judged
    shot = browser_kit.artifact("mirador-shared-manifest.png")
    page.screenshot(path=str(shot))
    print(f"Mirador screenshot: {shot}")
    assert not [p for p in page.problems if "HTTP 4" in p or "HTTP 5" in p], page.problems


def test_mirador_and_the_console_draw_a_vectorized_diagram(
    page, mirador: str, iiif_stack: Stack, iiif_api: Api, iiif_server: IiifServer, web_origins
) -> None:
    """One annotation per primitive, each an SvgSelector path that Mirador draws (in its
    annotation colour, which nothing on the brown-on-paper diagram has)."""
    from synthetic.diagrams import render_diagram

    diagram = render_diagram(424_243, long_side=1200)
    published = iiif_server.publish("vec-diagram", diagram.image, 3)
    url = _book_of(iiif_server, "vectorized", [published])
    task_id = iiif_api.submit_ok({"type": "vectorize", "input": {"manifest_url": url}})
    body = iiif_api.wait(task_id, timeout_s=180)
    assert body["state"] == "SUCCEEDED", body
    primitives = body["result"]["items"][0]["primitives"]
    assert primitives

    share = iiif_api.request("POST", f"/result/{task_id}/shares", json={}).json()
    manifest_url = share["manifests"][0]["manifest_url"]
    page.goto(f"{web_origins.other}/{mirador}?manifest={quote(manifest_url)}&canvas=0")
    assert _annotation_count(page) == len(primitives), page.problems
    listed = page.locator(".mirador-window-sidebar-annotation-panel [role=menuitem]")
    chips = [e.locator(".MuiChip-label").inner_text() for e in listed.all()]
    assert chips == [p["kind"] for p in primitives]
    page.wait_for_load_state("networkidle")
    time.sleep(3)  # OpenSeadragon's zoom animation
    shot = browser_kit.artifact("mirador-vectorized-diagram.png")
    page.screenshot(path=str(shot))
    print(f"Mirador screenshot: {shot}")
    # The geometry is drawn: the picture changes when "highlight all" is switched off.
    viewer = page.locator(".openseadragon-canvas").first
    drawn = viewer.screenshot()
    page.locator("button[aria-label='Highlight none']").first.click()
    time.sleep(1)
    assert _changed_pixels(drawn, viewer.screenshot()) > 500, "Mirador drew no annotation"
    assert not [p for p in page.problems if "HTTP 4" in p or "HTTP 5" in p], page.problems

    # The operator page draws them on the task's thumbnail.
    _sign_in(page, iiif_stack, iiif_stack.keys["iiif"])
    page.click(f'tr[data-task="{task_id}"] button.open')
    page.wait_for_selector("#pages figure", timeout=10_000)
    assert page.locator("#pages figure path.primitive").count() == len(primitives)
    page.screenshot(path=str(browser_kit.artifact("console-vectorized.png")), full_page=True)


def _book_of(iiif_server: IiifServer, name: str, published: list[Published]) -> str:
    base = f"{iiif_server.url}/{name}"
    canvases = [
        v3_canvas(f"{base}/canvas/{i}", f"f. {i + 1}", p.width, p.height, v3_image(p))
        for i, p in enumerate(published)
    ]
    manifest = v3_manifest(f"{base}/manifest.json", name, canvases)
    return iiif_server.add_json(f"{name}/manifest.json", manifest)


def _changed_pixels(a: bytes, b: bytes) -> int:
    import io

    import numpy as np
    from PIL import Image

    one, two = (np.asarray(Image.open(io.BytesIO(x)).convert("L")).astype(int) for x in (a, b))
    return int((np.abs(one - two) > 40).sum())


# --- The operator page --------------------------------------------------------------------------


def _slow_book(iiif_server: IiifServer, name: str, page: RenderedPage, n: int, delay_s: float):
    """n canvases whose images (served without an image service) each take delay_s."""
    data = jpeg(page.image)
    base = f"{iiif_server.url}/{name}"
    canvases = []
    for i in range(n):
        image = iiif_server.add(f"{name}/{i}.jpg", data)
        iiif_server.rules[f"/{name}/{i}.jpg"] = Rule(delay_s=delay_s)
        body = v3_image(None, url=image)
        canvases.append(v3_canvas(f"{base}/c/{i}", f"p. {i + 1}", 1200, 1600, body))
    manifest = v3_manifest(f"{base}/manifest.json", name, canvases)
    return iiif_server.add_json(f"{name}/manifest.json", manifest)


def _sign_in(page, iiif_stack: Stack, key: str) -> None:
    page.goto(f"{iiif_stack.base_url}/console")
    page.fill("#key-input", key)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#tasks:not([hidden])")


def test_console_shows_progress_draws_boxes_cancels_and_shares(
    page, iiif_stack: Stack, iiif_server: IiifServer, iiif_pages, admin_key: str, web_origins
) -> None:
    admin = iiif_stack.client(admin_key)
    source, _ = iiif_pages[1]
    url = _slow_book(iiif_server, "console-book", source, 16, 0.8)
    task_id = admin.submit_ok({"type": "detect", "input": {"manifest_url": url}, "params": LOW})
    _sign_in(page, iiif_stack, admin_key)
    assert page.locator("#key-who").inner_text() == "Admin key in use."
    page.wait_for_selector("#workers tr", timeout=10_000)  # from /readyz, as the counts below

    # The task's row: its progress bar moves while it runs.
    bar = page.locator(f'tr[data-task="{task_id}"] progress')
    seen: list[float] = []
    counts: set[tuple[str, str]] = set()  # (queued, running) as the admin panel shows them
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = page.locator(f'tr[data-task="{task_id}"]').get_attribute("data-state")
        counts.add((page.inner_text("#queue-depth"), page.inner_text("#running-count")))
        value = float(bar.get_attribute("value") or 0)
        if not seen or seen[-1] != value:
            seen.append(value)
            if 0 < value < 16 and len(seen) == 2:
                page.screenshot(path=str(browser_kit.artifact("console-running.png")))
        if state not in ("QUEUED", "RUNNING"):
            break
        time.sleep(0.1)
    assert state == "SUCCEEDED", (state, seen)
    moving = [v for v in seen if 0 < v < 16]
    assert len(moving) >= 2 and seen[-1] == 16, seen
    # Counts from /readyz: numbers, and ours among the running at some point.
    assert all(q.isdigit() and r.isdigit() for q, r in counts if "-" not in (q, r)), counts
    assert any(r.isdigit() and int(r) >= 1 for _, r in counts), counts

    # Opened: its pages with their boxes, as many as the result has.
    page.click(f'tr[data-task="{task_id}"] button.open')
    page.wait_for_selector("#pages figure", timeout=10_000)
    result = admin.status(task_id).json()["result"]["items"]
    assert page.locator("#pages figure").count() == 16
    boxes = sum(len(item["detections"]) for item in result)
    assert boxes > 0 and page.locator("#pages svg rect.box").count() == boxes
    on_first = page.locator('#pages figure[data-index="0"] rect.box')
    assert on_first.count() == len(result[0]["detections"])
    for thumbnail in page.locator("#pages img").all():  # loaded lazily: bring each in view
        thumbnail.scroll_into_view_if_needed()
    loaded = "images => images.every((image) => image.complete && image.naturalWidth > 0)"
    deadline = time.monotonic() + 30  # (wait_for_function would need eval: the CSP forbids it)
    while not page.locator("#pages img").evaluate_all(loaded) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert page.locator("#pages img").evaluate_all(loaded)
    assert page.locator("#key-form").is_hidden()
    page.evaluate("window.scrollTo(0, 0)")
    shot = browser_kit.artifact("console-boxes.png")
    page.screenshot(path=str(shot), full_page=True)
    print(f"Console screenshot: {shot}")

    # Share: the manifest URL opens without a key; "open in viewer" points at the viewer.
    page.click("#share-button")
    page.wait_for_selector("#share:not([hidden]) .share-url")
    urls = [u.input_value() for u in page.locator(".share-url").all()]
    manifest_url = next(u for u in urls if "/iiif/manifest/0?token=" in u)
    assert requests.get(manifest_url, timeout=10).json()["type"] == "Manifest"
    viewer = page.locator("a.viewer-link").first.get_attribute("href")
    assert viewer == f"{web_origins.allowed}/mirador.html?manifest={quote(manifest_url, safe='')}"
    page.click("#revoke-share")
    page.wait_for_selector("#share[hidden]", state="attached")
    assert requests.get(manifest_url, timeout=10).status_code == 401

    # Cancel from the list.
    slow = _slow_book(iiif_server, "console-cancel", source, 16, 0.8)
    cancelled = admin.submit_ok({"type": "detect", "input": {"manifest_url": slow}})
    page.click(f'tr[data-task="{cancelled}"] button.cancel', timeout=10_000)
    assert admin.wait(cancelled, timeout_s=60)["state"] == "CANCELLED"
    page.wait_for_selector(f'tr[data-task="{cancelled}"][data-state="CANCELLED"]')
    assert not [p for p in page.problems if "pageerror" in p or "Content Security" in p]
