"""A cluster task's result in a real browser (Chromium, test_browser.py's set-up), opened through a
share link as a colleague without a key would: the contact sheet renders every prototype and
thumbnail under its own Content-Security-Policy, and Mirador browses the IIIF collection of the
families and a family's manifest."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import pytest
import requests

from testkit import browser as browser_kit
from testkit.stack import Api

pytestmark = pytest.mark.live


def _share(api: Api, task_id: str) -> str:
    return api.request("POST", f"/result/{task_id}/shares", json={}).json()["token"]


def test_contact_sheet_renders_in_chromium(
    page,
    iiif_stack,
    iiif_api: Api,
    url_run: dict[str, Any],
) -> None:
    task_id = url_run["task_id"]
    token = _share(iiif_api, task_id)
    page.goto(f"{iiif_stack.base_url}/result/{task_id}?format=html&token={quote(token)}")
    page.wait_for_load_state("networkidle")
    clusters = url_run["result"]["clusters"]
    assert page.locator(".row").count() == len(clusters) + 1  # + unclustered
    assert page.locator("img.proto").count() == len(clusters)
    # Every picture arrived and decoded (prototypes from the API, thumbnails from their hosts)
    sizes = page.evaluate("[...document.images].map((i) => [i.complete, i.naturalWidth])")
    assert sizes and all(done and width > 0 for done, width in sizes), sizes
    # The inline stylesheet applied (its hash is in the CSP): prototypes framed, no violation
    border = page.evaluate("getComputedStyle(document.querySelector('img.proto')).borderTopWidth")
    assert border == "2px"
    first = page.locator(".row a.member").first.get_attribute("href")
    assert first in {m["image_url"] for m in clusters[0]["members"]}
    shot = browser_kit.artifact("cluster-contact-sheet.png")
    page.screenshot(path=str(shot), full_page=True)
    print(f"contact sheet screenshot: {shot}")
    # No refused style or picture, no script error (the browser's own /favicon.ico 404 aside)
    refused = [p for p in page.problems if "Content Security Policy" in p or "HTTP " in p]
    assert not refused and not [p for p in page.problems if "pageerror" in p], page.problems


def test_mirador_browses_the_families(
    page,
    mirador: str,
    iiif_api: Api,
    web_origins,
    url_run: dict[str, Any],
) -> None:
    task_id = url_run["task_id"]
    token = _share(iiif_api, task_id)
    shared = requests.get(
        f"{iiif_api.base_url}/result/{task_id}",
        params={"format": "iiif", "token": token},
        timeout=10,
    )
    collection = shared.json()
    assert collection["type"] == "Collection"
    page.goto(f"{web_origins.other}/{mirador}?manifest={quote(collection['id'])}")
    # Mirador reads the collection (its label is the window's title) and lists its manifests,
    # one per family, in its collection dialog
    page.get_by_text(collection["label"]["none"][0]).first.wait_for(timeout=30_000)
    # The dialog is opened by the window's button; a slow page may show the dialog first
    first_family = page.get_by_text(collection["items"][0]["label"]["none"][0]).first
    show = page.get_by_role("button", name="Show collection")
    show.or_(first_family).first.wait_for(state="visible", timeout=60_000)
    if not first_family.is_visible():
        show.click()
    for family in collection["items"]:
        label = family["label"]["none"][0]
        page.get_by_text(label).first.wait_for(state="visible", timeout=30_000)
    page.screenshot(path=str(browser_kit.artifact("cluster-collection-mirador.png")))
    first = collection["items"][0]
    manifest = requests.get(first["id"], timeout=10).json()
    page.goto(f"{web_origins.other}/{mirador}?manifest={quote(first['id'])}")
    title = manifest["label"]["none"][0]
    page.get_by_text(title).first.wait_for(state="visible", timeout=30_000)
    # One canvas per member, in the manifest's order
    page.get_by_text(f"1 of {len(manifest['items'])}").first.wait_for(timeout=30_000)
    page.wait_for_load_state("networkidle")
    time.sleep(3)  # OpenSeadragon's zoom animation
    shot = browser_kit.artifact("cluster-family-mirador.png")
    page.screenshot(path=str(shot))
    print(f"Mirador screenshot: {shot}")
    assert not [p for p in page.problems if "HTTP 4" in p or "HTTP 5" in p], page.problems
