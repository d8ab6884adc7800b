"""Hostile IIIF documents: an info.json that breaks its reader must not strand the other pages
waiting for it, numbers out of range are invalid input (never an internal error), deeply nested
JSON is invalid JSON, and a collection that includes itself is read once and terminates."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from model.iiif import presentation
from model.iiif.image_api import ImageService, parse_info
from model.iiif.jsonld import MAX_SIDE_PX, positive_int
from model.iiif.loader import Limits, ManifestError, json_getter, load
from model.iiif.negotiate import ServiceInfo, plan_request
from model.iiif.presentation import CanvasImage, parse_document
from model.iiif.preview import preview
from model.settings import Settings
from testkit.iiif_server import (
    IiifServer,
    v2_canvas,
    v2_manifest,
    v3_canvas,
    v3_image,
    v3_manifest,
)
from testkit.stack import Api

HUGE_DIGITS = "9" * 400
# Sizes a hostile or broken document may carry; each must be refused as invalid.
BAD_SIZES: list[Any] = [
    float("inf"),  # what json.loads makes of 1e999
    float("nan"),
    -5,
    "abc",
    int(HUGE_DIGITS),
    HUGE_DIGITS,
    MAX_SIDE_PX + 1,
    True,
]


def _short(value: Any) -> str:
    return f"{type(value).__name__}-{str(value)[:12]}"


# --- (3) info.json readers that fail must release every waiter ---------------------------------


class _GatedFailure:
    """get_json that blocks until released, then raises; counts its calls."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.gate = threading.Event()
        self.calls = 0

    def __call__(self, url: str) -> Any:
        self.calls += 1
        self.gate.wait(10)
        raise self.error


@pytest.mark.parametrize(
    "error",
    [RecursionError("deep"), OverflowError("inf"), RuntimeError("boom"), KeyError("x")],
    ids=lambda e: type(e).__name__,
)
def test_failed_info_json_releases_every_waiter(error: BaseException) -> None:
    getter = _GatedFailure(error)
    services = ServiceInfo(getter)
    service = ImageService("http://x/iiif/p", 3, 0)
    results: list[Any] = []

    def describe() -> None:
        try:
            results.append(services.describe(service))
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            results.append(exc)

    threads = [threading.Thread(target=describe, daemon=True) for _ in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # the other four reach their wait on the first reader
    getter.gate.set()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(t.is_alive() for t in threads), "threads left waiting on the failed service"
    assert getter.calls == 1
    assert len(results) == 5
    for result in results:
        assert isinstance(result, tuple), result
        described, problem = result
        assert described == service and problem and "info.json" in problem
    # Later pages get the recorded problem at once, without reading again.
    assert services.describe(service)[1] == results[0][1]
    assert getter.calls == 1


def test_failed_info_json_falls_back_to_the_image() -> None:
    getter = _GatedFailure(OverflowError("inf"))
    getter.gate.set()
    image = CanvasImage("http://x/full.jpg", 100, 200, ImageService("http://x/iiif/p", 3, 0))
    request = plan_request(image, ServiceInfo(getter), 832, 416)
    assert request.method == "image" and request.url == "http://x/full.jpg"
    assert "info.json" in request.notes[0]


def _info(**sizes: Any) -> dict[str, Any]:
    return {
        "@context": "http://iiif.io/api/image/3/context.json",
        "id": "http://x/iiif/p",
        "type": "ImageService3",
        "profile": "level1",
        **sizes,
    }


@pytest.mark.parametrize("bad", BAD_SIZES, ids=_short)
@pytest.mark.parametrize("side", ["width", "height"])
def test_info_json_with_an_invalid_size_is_undescribed(bad: Any, side: str) -> None:
    info = _info(width=1000, height=1500)
    info[side] = bad
    services = ServiceInfo(lambda url: info)
    service, problem = services.describe(ImageService("http://x/iiif/p", 3, 1))
    assert problem is not None and "info.json" in problem and "invalid" in problem
    assert not service.described


def test_info_json_text_with_1e999_is_undescribed() -> None:
    text = '{"id": "http://x/iiif/p", "type": "ImageService3", "width": 1e999, "height": 10}'
    services = ServiceInfo(lambda url: json.loads(text))
    _, problem = services.describe(ImageService("http://x/iiif/p", 3, 1))
    assert problem is not None and "invalid" in problem


def test_info_json_ignores_unusable_optional_numbers() -> None:
    # Hints (listed sizes, server maxima) out of range are dropped; the size is what matters.
    info = _info(
        width=1000,
        height=1500,
        sizes=[{"width": float("inf"), "height": 5}, {"width": 100, "height": 150}],
        maxWidth=int(HUGE_DIGITS),
        maxArea=float("nan"),
    )
    described = parse_info(info, "http://x/iiif/p", 3)
    assert described is not None
    assert (described.width, described.height, described.sizes) == (1000, 1500, ((100, 150),))
    assert described.max_width is None and described.max_area is None


def test_positive_int_is_lenient_but_bounded() -> None:
    assert positive_int("1000") == 1000 and positive_int(12.7) == 12
    for bad in [*BAD_SIZES, None, 0, []]:
        assert positive_int(bad) is None, bad


# --- (3) canvas sizes and xywh fragments out of range -------------------------------------------


def _get_from(docs: dict[str, Any], counts: Counter | None = None):
    def get(url: str) -> Any:
        if counts is not None:
            counts[url] += 1
        return docs[url]

    return get


def _v3_with(canvas_edit: Any) -> dict[str, Any]:
    """A 3.0 manifest of two canvases; `canvas_edit` spoils the first one."""
    page = v3_image(None, "http://x/p.jpg")
    page.update(width=1000, height=1500)
    canvases = [v3_canvas(f"http://x/c{i}", f"c{i}", 1000, 1500, dict(page)) for i in range(2)]
    canvas_edit(canvases[0])
    return v3_manifest("http://x/m", "M", canvases)


def _v2_with(canvas_edit: Any) -> dict[str, Any]:
    resource = {"@id": "http://x/p.jpg", "@type": "dctypes:Image", "width": 1000, "height": 1500}
    canvases = [v2_canvas(f"http://x/c{i}", f"c{i}", 1000, 1500, dict(resource)) for i in range(2)]
    canvas_edit(canvases[0])
    return v2_manifest("http://x/m", "M", canvases)


def _set_canvas(key: str, bad: Any):
    def edit(canvas: dict[str, Any]) -> None:
        canvas[key] = bad

    return edit


def _set_v3_body(key: str, bad: Any):
    def edit(canvas: dict[str, Any]) -> None:
        canvas["items"][0]["items"][0]["body"][key] = bad

    return edit


def _set_v2_resource(key: str, bad: Any):
    def edit(canvas: dict[str, Any]) -> None:
        canvas["images"][0]["resource"][key] = bad

    return edit


def _assert_first_canvas_skipped(manifest: dict[str, Any]) -> None:
    loaded = load(["http://x/m"], [], _get_from({"http://x/m": manifest}), Limits())
    assert [t.canvas.id for t in loaded.canvases] == ["http://x/c1"]
    (skipped,) = loaded.manifests[0].skipped
    assert skipped["canvas_id"] == "http://x/c0" and "invalid" in skipped["reason"]


@pytest.mark.parametrize("bad", BAD_SIZES, ids=_short)
@pytest.mark.parametrize(
    "spoil",
    [
        lambda bad: _v3_with(_set_canvas("width", bad)),
        lambda bad: _v3_with(_set_canvas("height", bad)),
        lambda bad: _v3_with(_set_v3_body("width", bad)),
        lambda bad: _v2_with(_set_canvas("width", bad)),
        lambda bad: _v2_with(_set_v2_resource("height", bad)),
    ],
    ids=["v3-canvas-width", "v3-canvas-height", "v3-image-width", "v2-canvas", "v2-image"],
)
def test_invalid_sizes_skip_the_canvas(spoil: Any, bad: Any) -> None:
    _assert_first_canvas_skipped(spoil(bad))


def test_manifest_text_with_1e999_skips_the_canvas() -> None:
    text = json.dumps(_v3_with(lambda c: None)).replace('"width": 1000', '"width": 1e999', 1)
    _assert_first_canvas_skipped(json.loads(text))


def _xywh_target(fragment: str):
    def edit(canvas: dict[str, Any]) -> None:
        canvas["items"][0]["items"][0]["target"] = f"{canvas['id']}#xywh={fragment}"

    return edit


def _xywh_selector(fragment: str):
    def edit(canvas: dict[str, Any]) -> None:
        canvas["items"][0]["items"][0]["target"] = {
            "type": "SpecificResource",
            "source": canvas["id"],
            "selector": {"type": "FragmentSelector", "value": f"xywh={fragment}"},
        }

    return edit


@pytest.mark.parametrize(
    "fragment",
    [f"0,0,{HUGE_DIGITS},10", f"{HUGE_DIGITS},0,10,10", f"0,0,10,{HUGE_DIGITS}.5", "0,0,2000000,5"],
    ids=["w", "x", "h-decimal", "over-limit"],
)
@pytest.mark.parametrize("where", [_xywh_target, _xywh_selector], ids=["target", "selector"])
def test_invalid_xywh_skips_the_canvas(where: Any, fragment: str) -> None:
    _assert_first_canvas_skipped(_v3_with(where(fragment)))


def test_v2_on_with_huge_xywh_skips_the_canvas() -> None:
    def edit(canvas: dict[str, Any]) -> None:
        canvas["images"][0]["on"] = f"{canvas['@id']}#xywh=0,0,{HUGE_DIGITS},1"

    _assert_first_canvas_skipped(_v2_with(edit))


def test_valid_xywh_still_places_the_image() -> None:
    doc = parse_document(_v3_with(_xywh_target("10,20,300.4,400")))
    image = doc.canvases[0].image
    assert image is not None and image.region == (10, 20, 300, 400)


def test_embedded_service_with_an_invalid_size_skips_the_canvas() -> None:
    def edit(canvas: dict[str, Any]) -> None:
        canvas["items"][0]["items"][0]["body"]["service"] = [
            {"id": "http://x/iiif/p", "type": "ImageService3", "width": float("inf")}
        ]

    _assert_first_canvas_skipped(_v3_with(edit))


# --- (3) deeply nested JSON is invalid JSON ------------------------------------------------------


class _Body:
    def __init__(self, content: bytes) -> None:
        self.content = content


class _Fetcher:
    def __init__(self, content: bytes) -> None:
        self.body = _Body(content)

    def get(self, url: str, max_bytes: int | None = None) -> _Body:
        return self.body


DEEP = b"[" * 200_000 + b"]" * 200_000


def test_json_getter_reports_deep_nesting_as_invalid_json() -> None:
    get = json_getter(_Fetcher(DEEP), 10_000_000)
    with pytest.raises(ValueError):
        get("http://x/info.json")


def test_deep_info_json_leaves_the_service_undescribed() -> None:
    services = ServiceInfo(json_getter(_Fetcher(DEEP), 10_000_000))
    _, problem = services.describe(ImageService("http://x/iiif/p", 3, 0))
    assert problem == "info.json is not valid JSON"


def test_deep_manifest_is_manifest_invalid() -> None:
    with pytest.raises(ManifestError) as caught:
        load(["http://x/m"], [], json_getter(_Fetcher(DEEP), 10_000_000), Limits())
    assert caught.value.code == "manifest_invalid"


def _deep_label(depth: int) -> Any:
    label: Any = "x"
    for _ in range(depth):
        label = [label]
    return label


def test_deeply_nested_labels_are_read_without_recursing() -> None:
    manifest = _v3_with(lambda c: None)
    manifest["label"] = _deep_label(100_000)
    manifest["items"][0]["label"] = {"en": [_deep_label(100_000)]}  # str() of it recurses
    loaded = load([], [("m.json", manifest)], _get_from({}), Limits())
    assert loaded.manifests[0].label == "" and len(loaded.canvases) == 2
    assert loaded.canvases[0].canvas.label == ""


def test_embedded_member_nested_too_deeply_is_read_without_recursing() -> None:
    deep = _v3_with(lambda c: None)
    deep["id"], deep["label"] = "http://x/deep", _deep_label(100_000)
    good = _v3_with(lambda c: None)
    collection = {"id": "http://x/coll", "type": "Collection", "items": [deep, good]}
    loaded = load(["http://x/coll"], [], _get_from({"http://x/coll": collection}), Limits())
    assert len(loaded.canvases) == 4 and loaded.problems == []


def test_a_document_too_deep_to_walk_is_not_iiif(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever part of parsing recurses too deep, the document is invalid, not an internal error.
    def recurse(node: Any) -> Any:
        raise RecursionError("deep")

    monkeypatch.setattr(presentation, "node_id", recurse)
    with pytest.raises(ManifestError) as caught:
        load([], [("m.json", _v3_with(lambda c: None))], _get_from({}), Limits())
    assert caught.value.code == "manifest_invalid" and "nested too deeply" in caught.value.message
    collection = {"id": "http://x/coll", "type": "Collection", "items": [_v3_with(lambda c: None)]}
    monkeypatch.undo()
    monkeypatch.setattr(presentation, "_canvases_v3", recurse)
    monkeypatch.setattr(presentation, "_canvases_v2", recurse)
    loaded = load(["http://x/coll"], [], _get_from({"http://x/coll": collection}), Limits())
    assert loaded.canvases == [] and "nested too deeply" in loaded.problems[0]["reason"]


def test_preview_of_a_deeply_nested_file_is_manifest_invalid(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(DEEP)
    with pytest.raises(ManifestError) as caught:
        preview(str(path), Settings(), 832, 416)
    assert caught.value.code == "manifest_invalid"


# --- (12) collections that include themselves or a manifest twice --------------------------------


def _ref(url: str, kind: str = "Manifest") -> dict[str, Any]:
    return {"id": url, "type": kind, "label": url}


def _manifest(url: str) -> dict[str, Any]:
    manifest = _v3_with(lambda c: None)
    manifest["id"] = url
    for i, canvas in enumerate(manifest["items"]):
        canvas["id"] = f"{url}/c{i}"
    return manifest


def test_self_including_collection_reads_each_document_once() -> None:
    docs = {
        "http://x/a": {
            "id": "http://x/a",
            "type": "Collection",
            "items": [
                _ref("http://x/a", "Collection"),
                _ref("http://x/m"),
                _ref("http://x/b", "Collection"),
                _ref("http://x/m"),
            ],
        },
        "http://x/b": {
            "id": "http://x/b",
            "type": "Collection",
            "items": [_ref("http://x/a", "Collection"), _ref("http://x/m")],
        },
        "http://x/m": _manifest("http://x/m"),
    }
    counts: Counter = Counter()
    loaded = load(["http://x/a"], [], _get_from(docs, counts), Limits(max_depth=5))
    assert counts == {"http://x/a": 1, "http://x/b": 1, "http://x/m": 1}
    assert [m.id for m in loaded.manifests] == ["http://x/m"]
    assert [t.canvas.id for t in loaded.canvases] == ["http://x/m/c0", "http://x/m/c1"]


def test_same_manifest_under_another_url_is_included_once() -> None:
    # The alias is fetched (its id is unknown until then) but its canvases are not added again.
    docs = {
        "http://x/coll": {
            "id": "http://x/coll",
            "type": "Collection",
            "items": [_ref("http://x/m"), _ref("http://x/alias"), {**_manifest("http://x/m")}],
        },
        "http://x/m": _manifest("http://x/m"),
        "http://x/alias": _manifest("http://x/m"),
    }
    counts: Counter = Counter()
    loaded = load(["http://x/coll"], [], _get_from(docs, counts), Limits())
    assert counts == {"http://x/coll": 1, "http://x/m": 1, "http://x/alias": 1}
    assert len(loaded.manifests) == 1 and len(loaded.canvases) == 2
    assert len(loaded.problems) == 2 and all("already" in p["reason"] for p in loaded.problems)


def test_cycle_through_embedded_collections_terminates() -> None:
    inner = {"id": "http://x/a", "type": "Collection", "items": [_ref("http://x/a", "Collection")]}
    outer = {"id": "http://x/a", "type": "Collection", "items": [inner, _ref("http://x/m")]}
    counts: Counter = Counter()
    docs = {"http://x/a": outer, "http://x/m": _manifest("http://x/m")}
    loaded = load(["http://x/a"], [], _get_from(docs, counts), Limits(max_depth=10))
    assert counts == {"http://x/a": 1, "http://x/m": 1}
    assert len(loaded.canvases) == 2


# --- live stack: hostile numbers end the task without internal_error -----------------------------


def _hostile_service(server: IiifServer, base: str) -> str:
    """A service whose info.json claims a width of 1e999 (valid JSON, Python reads inf)."""
    service = f"{server.url}/{base}/iiif/p"
    info = {
        "@context": "http://iiif.io/api/image/3/context.json",
        "id": service,
        "type": "ImageService3",
        "protocol": "http://iiif.io/api/image",
        "profile": "level1",
        "width": 7777,
        "height": 1600,
    }
    text = json.dumps(info).replace('"width": 7777', '"width": 1e999')
    server.add(f"{base}/iiif/p/info.json", text.encode())
    return service


def _run(api: Api, manifest_url: str) -> dict[str, Any]:
    task_id = api.submit_ok(
        {"type": "detect", "input": {"manifest_url": manifest_url}, "timeout": 60}
    )
    try:
        return api.wait(task_id, timeout_s=120)
    finally:
        api.terminate(task_id)  # frees the worker if the task is stuck after all


def _outcome(body: dict[str, Any]) -> tuple[str, str | None]:
    return body["state"], (body.get("error") or {}).get("code")


def test_hostile_numbers_end_the_task_without_internal_error(
    iiif_api: Api, iiif_server: IiifServer, iiif_pages
) -> None:
    _, page = iiif_pages[0]
    url = f"{iiif_server.url}/hostile"
    # Several pages sharing one service whose info.json says "width": 1e999.
    service = _hostile_service(iiif_server, "hostile")
    shared = []
    for i in range(6):  # more pages than download threads: several wait on the one info.json
        body = v3_image(None, page.full_url)
        # No declared level: each page needs the info.json (a declared level 1 would not).
        body.update(
            width=page.width,
            height=page.height,
            service=[{"id": service, "type": "ImageService3"}],
        )
        shared.append(v3_canvas(f"{url}/c{i}", f"p{i}", 1200, 1600, body))
    shared_url = iiif_server.add_json(
        "hostile/shared.json", v3_manifest(f"{url}/shared.json", "Shared", shared)
    )
    # A good canvas, one 1e999 wide, one placed at a 400-digit xywh.
    good = v3_canvas(f"{url}/good", "good", 1200, 1600, v3_image(page))
    wide = v3_canvas(f"{url}/wide", "wide", 7777, 1600, v3_image(page))
    far = v3_canvas(f"{url}/far", "far", 1200, 1600, v3_image(page))
    far["items"][0]["items"][0]["target"] = f"{url}/far#xywh=0,0,{HUGE_DIGITS},10"
    text = json.dumps(v3_manifest(f"{url}/sizes.json", "Sizes", [good, wide, far]))
    text = text.replace('"width": 7777', '"width": 1e999')  # as a hostile manifest writes it
    sizes_url = iiif_server.add("hostile/sizes.json", text.encode())

    sizes_body = _run(iiif_api, sizes_url)
    shared_body = _run(iiif_api, shared_url)
    # Both at once, so that a failure shows both outcomes.
    assert {"sizes": _outcome(sizes_body), "shared": _outcome(shared_body)} == {
        "sizes": ("SUCCEEDED", None),
        "shared": ("SUCCEEDED", None),  # not TIMED_OUT: no page waited forever
    }
    skipped = sizes_body["result"]["provenance"]["manifests"][0]["skipped"]
    assert [s["label"] for s in skipped] == ["wide", "far"]
    assert all("invalid" in s["reason"] for s in skipped)
    assert [i["label"] for i in sizes_body["result"]["items"]] == ["good"]
    items = shared_body["result"]["items"]
    assert len(items) == 6
    for item in items:
        # Each page falls back to the image resource (or fails alone), never internal_error.
        if item["status"] != "failed":
            assert item["request"]["method"] == "image", item
            assert "info.json invalid" in " ".join(item["notes"]), item
