"""Whole large books in one task (issue 19, items 2 and 10): a manifest of 10,000 canvases is
read whole by default; what a limit still cuts is counted (never listed canvas by canvas) and
shown as a warning; the status of a 10,000-page task stays small and its result reads page by
page. On a bare Redis with the HTTP app (no worker): the records are made as a worker leaves
them. The same with a live stack and a 100 ms host: `python -m bench --only book10k`."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest

from model.iiif.loader import MAX_LISTED, Limits, limit_warnings, load
from model.settings import Settings
from testkit.iiif_server import v3_canvas, v3_manifest

BOOK = "https://library.example/iiif/register"


def _book(name: str, with_image: int, without_image: int = 0) -> dict[str, Any]:
    def canvas(n: int, image: bool) -> dict[str, Any]:
        body = {"id": f"{BOOK}/{name}/{n}.jpg", "type": "Image", "width": 800, "height": 1200}
        return v3_canvas(f"{BOOK}/{name}/canvas/{n}", f"p. {n}", 800, 1200, body if image else None)

    canvases = [canvas(n, False) for n in range(without_image)]
    canvases += [canvas(without_image + n, True) for n in range(with_image)]
    return v3_manifest(f"{BOOK}/{name}", name, canvases)


def _no_fetch(url: str) -> Any:
    raise AssertionError(f"nothing to fetch: {url}")


def test_a_10000_page_book_is_read_whole_by_default() -> None:
    assert Settings().iiif.max_canvases >= 10_000
    limits = Limits(max_canvases=Settings().iiif.max_canvases)
    loaded = load([], [("register.json", _book("register", 10_000))], _no_fetch, limits)
    assert len(loaded.canvases) == 10_000
    assert limit_warnings(loaded, limits) == []


def test_what_a_limit_cuts_is_counted_not_listed_and_warned_of(bare_redis) -> None:
    """Before: every canvas past the limit was listed in the provenance, kept for a day (5
    manifests of 100,000 canvases stored 67 MB beside the task's record)."""
    from model.keyspace import detail_key, task_key
    from model.tasks.record import DETAIL_PROVENANCE_BYTES, RECORD_PROVENANCE_BYTES
    from model.tasks.store import TaskStore

    limits = Limits(max_canvases=10_000)
    books = [
        ("a.json", _book("a", 15_000)),
        ("b.json", _book("b", 5_000, without_image=5_000)),
    ]
    loaded = load([], books, _no_fetch, limits)
    a, b = loaded.manifests
    assert len(loaded.canvases) == 10_000
    assert (a.canvases, a.over_limit, a.skipped) == (10_000, 5_000, [])
    assert (b.canvases, b.over_limit, b.skipped_count) == (0, 5_000, 5_000)
    assert len(b.skipped) == MAX_LISTED  # the first ones, with why
    (warning,) = limit_warnings(loaded, limits)
    assert warning["code"] == "canvas_limit" and warning["count"] == 10_000
    assert "10000 canvases with an image were left out" in warning["message"]

    store = TaskStore(bare_redis, 60, 60)
    record = store.create("alice", "detect", {"params": {}, "inputs": []}, 10_000, 600)
    provenance = {
        "manifests": [m.as_dict() for m in loaded.manifests],
        "manifest_problems": loaded.problems,
        "warnings": [warning],
    }
    store.set_provenance(record.id, provenance)
    stored = len(bare_redis.hget(task_key(record.id), "provenance")) + (
        bare_redis.strlen(detail_key(record.id))
    )
    print(f"provenance of a task cut from 25,000 canvases to 10,000: {stored} bytes stored")
    assert stored < 100_000
    assert stored <= RECORD_PROVENANCE_BYTES + DETAIL_PROVENANCE_BYTES


def test_collection_members_past_the_limit_are_counted_once_each() -> None:
    members = [{"id": f"{BOOK}/m{n}", "type": "Manifest"} for n in range(50_000)]
    collection = {
        "@context": "http://iiif.io/api/presentation/3/context.json",
        "id": f"{BOOK}/all",
        "type": "Collection",
        "items": [{**members[0], **_book("m0", 3)}, *members[1:]],
    }
    loaded = load([], [("all.json", collection)], _no_fetch, Limits(max_canvases=3))
    assert len(loaded.canvases) == 3
    assert loaded.unread_members == 49_999 and loaded.problems_count == 49_999
    assert len(loaded.problems) == MAX_LISTED
    (warning,) = limit_warnings(loaded, Limits(max_canvases=3))
    assert "49999 collection members were not read" in warning["message"]


# --- the status and result of a 10,000-page task ----------------------------------------------


def _item(index: int) -> dict[str, Any]:
    detection = {"xywh": [10, 20, 300, 400], "confidence": 0.87, "label": "illustration"}
    return {
        "index": index,
        "source": f"{BOOK}/a/canvas/{index}",
        "canvas_id": f"{BOOK}/a/canvas/{index}",
        "canvas_index": index,
        "label": f"p. {index}",
        "manifest": 0,
        "status": "ok",
        "coordinates": "canvas",
        "canvas_width": 800,
        "canvas_height": 1200,
        "width": 800,
        "height": 1200,
        "image_url": f"{BOOK}/a/{index}.jpg/full/800,/0/default.jpg",
        "detections": [detection] * 2,
        "timings": {"fetch_s": 0.101, "decode_s": 0.004, "inference_s": 0.0},
    }


def _finished_task(make_app, pages: int):
    """The app, and a finished task of `pages` pages (stored out of order, as pages finish)."""
    from model.tasks.states import State
    from model.tasks.store import TaskStore

    client = make_app()
    client.environ_base["HTTP_X_API_KEY"] = client.keys.create("alice")
    clean_redis = client.redis
    store = TaskStore(clean_redis, 3600, 3600)
    record = store.create("alice", "detect", {"params": {}, "inputs": []}, pages, 600)
    store.mark_running(record.id, 1)
    warning = {
        "code": "canvas_limit",
        "message": "2 canvases with an image were left out: a "
        "task reads at most 10000 (iiif.max_canvases)",
        "count": 2,
        "members_not_read": 0,
    }
    store.set_provenance(record.id, {"manifests": [{"index": 0}], "warnings": [warning]})
    order = [i ^ 1 for i in range(pages)]  # 1, 0, 3, 2...: not index order
    with clean_redis.pipeline(transaction=False) as pipe:
        for index in order:
            pipe.rpush(f"sc:task:{record.id}:items", json.dumps(_item(index)))
        pipe.hset(f"sc:task:{record.id}", "done", pages)
        pipe.execute()
    running = client.get(f"/status/{record.id}")
    assert store.finish(record.id, State.SUCCEEDED)
    client.running_status = running
    client.task_id = record.id
    return client


@pytest.fixture
def big_task(make_app):
    """A finished task of 10,000 pages."""
    return _finished_task(make_app, 10_000)


def test_a_10000_page_task_is_cheap_to_poll_and_warns_of_its_cut(big_task) -> None:
    running = big_task.running_status
    assert running.status_code == 202
    assert len(running.data) < 4096, len(running.data)  # a few KB while it runs
    assert running.get_json()["warnings"][0]["code"] == "canvas_limit"

    done = big_task.get(f"/status/{big_task.task_id}")
    print(f"status of a finished 10,000-page task: {len(done.data)} bytes")
    assert done.status_code == 200 and len(done.data) < 1_000_000  # it was 6.9 MB
    body = done.get_json()
    assert body["warnings"][0]["count"] == 2
    result = body["result"]
    assert result["items_total"] == 10_000 and len(result["items"]) == 500
    assert result["items_next"] == f"/result/{big_task.task_id}?offset=500&limit=500"


def test_a_10000_page_result_reads_page_by_page_each_item_once(big_task) -> None:
    seen: list[int] = []
    url = f"/result/{big_task.task_id}?offset=0&limit=3000"
    first = big_task.get(url).get_json()
    assert first["provenance"]["warnings"][0]["code"] == "canvas_limit"
    offset: int | None = 0
    while offset is not None:
        page = big_task.get(f"/result/{big_task.task_id}?offset={offset}&limit=3000")
        assert page.status_code == 200, page.get_data(as_text=True)
        body = page.get_json()
        assert body["items_total"] == 10_000 and len(body["items"]) <= 3000
        indices = [item["index"] for item in body["items"]]
        assert indices == sorted(indices)
        seen += indices
        offset = body["next_offset"]
    assert sorted(seen) == list(range(10_000))  # every page once

    # The whole result, as before, for clients that read it in one go (in index order).
    whole = big_task.get(f"/result/{big_task.task_id}").get_json()
    assert [item["index"] for item in whole["items"]] == list(range(10_000))
    assert big_task.get(f"/result/{big_task.task_id}?limit=0").status_code == 422


def test_another_format_than_json_is_the_whole_document_paging_ignored(make_app) -> None:
    # Paging is for format=json: another format is the whole document, paging ignored (a
    # schema-valid request, so no 422: schemathesis holds the API to that). Whatever the
    # task's size: 12 pages, more than one page of 5 (a YOLO zip of 10,000 takes seconds).
    task = _finished_task(make_app, 12)
    paged_zip = task.get(f"/result/{task.task_id}?offset=0&limit=5&format=yolo")
    whole_zip = task.get(f"/result/{task.task_id}?format=yolo")
    assert paged_zip.status_code == 200 and paged_zip.mimetype == "application/zip"
    contents = _zip_contents(whole_zip.get_data())
    assert _zip_contents(paged_zip.get_data()) == contents
    assert sum(name.startswith("labels/") for name in contents) == 12, sorted(contents)


def _zip_contents(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # (entry times differ between calls)
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_cli_prints_the_warning_and_the_item_count(big_task) -> None:
    from client.commands import status_text, summary

    status = big_task.get(f"/status/{big_task.task_id}").get_json()
    line = summary(status)
    assert "SUCCEEDED: 10000/10000 pages done" in line
    assert "warning: 2 canvases with an image were left out" in line
    text = status_text(status)
    assert "warning   2 canvases with an image were left out" in text
    assert "10000 items (1000 detections in the first 500)" in text
