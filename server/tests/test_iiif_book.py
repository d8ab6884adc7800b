"""A 50-page manifest from the local IIIF server, end to end through the API: per-canvas
progress, size negotiation measured in bytes on the server's side, the per-host limit, and a
cancel noticed promptly while pages are still downloading."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from synthetic import render_page
from testkit.iiif_server import (
    IiifServer,
    Published,
    Rule,
    v3_canvas,
    v3_image,
    v3_manifest,
)
from testkit.stack import Api

pytestmark = pytest.mark.live

PAGES = 50
PER_HOST = 2  # fetch.per_host_concurrency of the IIIF test stack (4 download threads)


@pytest.fixture(scope="module")
def book(iiif_server: IiifServer) -> list[Published]:
    def make(i: int) -> Published:
        page = render_page(920_000 + i, 1200, 1600, n_illustrations=1 + i % 3)
        return iiif_server.publish(f"book{i:02d}", page.image, 3)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(make, range(PAGES)))


def book_manifest(server: IiifServer, name: str, pages: list[Published], service: bool) -> str:
    base = f"{server.url}/{name}"
    canvases = [
        v3_canvas(
            f"{base}/canvas/{i}", f"p. {i + 1}", p.width, p.height, v3_image(p, service=service)
        )
        for i, p in enumerate(pages)
    ]
    return server.add_json(
        f"{name}/manifest.json", v3_manifest(f"{base}/manifest.json", name, canvases)
    )


def image_bytes(server: IiifServer, since: int) -> int:
    return sum(
        e.bytes for e in server.log[since:] if e.status == 200 and e.path.endswith((".jpg",))
    )


def run_with_progress(api: Api, url: str) -> tuple[dict, list[int]]:
    task_id = api.submit_ok({"type": "detect", "input": {"manifest_url": url}})
    seen: list[int] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        body = api.status(task_id).json()
        progress = body["progress"]
        if not seen or seen[-1] != progress["done"]:
            seen.append(progress["done"])
        if body["state"] not in ("QUEUED", "RUNNING"):
            return body, seen
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish")


def test_fifty_pages_end_to_end_with_size_negotiation(
    iiif_api: Api, iiif_server: IiifServer, book: list[Published]
) -> None:
    negotiated_url = book_manifest(iiif_server, "book", book, service=True)
    full_url = book_manifest(iiif_server, "book-full", book, service=False)

    start = len(iiif_server.log)
    iiif_server.max_inflight = 0
    body, seen = run_with_progress(iiif_api, negotiated_url)
    negotiated = image_bytes(iiif_server, start)
    assert body["state"] == "SUCCEEDED", body
    assert body["progress"] == {"done": PAGES, "total": PAGES, "failed": 0}
    # Progress moved canvas by canvas (many intermediate values), not all at once at the end.
    assert len([d for d in seen if 0 < d < PAGES]) >= 5, seen
    items = body["result"]["items"]
    assert [i["canvas_id"].rsplit("/", 1)[1] for i in items] == [str(i) for i in range(PAGES)]
    assert all(i["image_url"].endswith("/full/600,800/0/default.jpg") for i in items)
    provenance = body["result"]["provenance"]
    assert provenance["cache"]["misses"] == PAGES
    assert provenance["bytes_fetched"] == negotiated
    assert iiif_server.max_inflight <= PER_HOST

    start = len(iiif_server.log)
    full_body, _ = run_with_progress(iiif_api, full_url)
    full = image_bytes(iiif_server, start)
    assert full_body["state"] == "SUCCEEDED"
    assert all(i["width"] == 1200 for i in full_body["result"]["items"])

    print(
        f"\n{PAGES} pages: {negotiated} bytes with size negotiation, {full} without "
        f"({full / negotiated:.1f}x); wall {provenance['timings']['wall_s']} s with, "
        f"{full_body['result']['provenance']['timings']['wall_s']} s without"
    )
    assert negotiated * 2 < full


def test_cancel_is_noticed_while_pages_download(
    iiif_api: Api, iiif_server: IiifServer, book: list[Published]
) -> None:
    pages = []
    for i, page in enumerate(book):
        path = f"/slowbook/{i:02d}.jpg"
        iiif_server.rules[path] = Rule(delay_s=0.5)
        url = iiif_server.add(
            path.lstrip("/"),
            iiif_server.root.joinpath(f"originals/{page.identifier}.jpg").read_bytes(),
        )
        pages.append(
            v3_canvas(f"{url}#canvas", f"s{i}", page.width, page.height, v3_image(None, url))
        )
    base = f"{iiif_server.url}/slowbook"
    url = iiif_server.add_json(
        "slowbook/manifest.json", v3_manifest(f"{base}/manifest.json", "slow", pages)
    )
    iiif_server.max_inflight = 0
    task_id = iiif_api.submit_ok({"type": "detect", "input": {"manifest_url": url}})
    iiif_api.wait(task_id, until={"RUNNING"}, predicate=lambda b: b["progress"]["done"] >= 4)
    asked = time.monotonic()
    assert iiif_api.terminate(task_id).status_code == 202
    body = iiif_api.wait(task_id, timeout_s=30)
    assert body["state"] == "CANCELLED", body
    assert time.monotonic() - asked < 5.0
    done = body["progress"]["done"]
    assert 4 <= done < PAGES
    assert len(body["result"]["items"]) == done + body["progress"]["failed"]
    # Downloads overlapped (prefetch threads), but never more than the per-host limit.
    assert iiif_server.max_inflight == PER_HOST
