"""IIIF pieces without a stack: lenient manifest parsing, Image API size choice by level, the
bounded prefetch, the annotation and YOLO builders."""

from __future__ import annotations

import io
import threading
import time
import zipfile

import pytest

from model.iiif.image_api import ImageService, choose_request, parse_service
from model.iiif.presentation import parse_document
from model.outputs.annotations import ResultLinks, annotation_page
from model.outputs.yolo import yolo_archive
from model.pipeline.prefetch import Prefetcher


def service(version: int, level: int, **extra) -> ImageService:
    return ImageService(
        id="https://img.example/iiif/p1",
        version=version,
        level=level,
        width=4000,
        height=6000,
        **extra,
    )


@pytest.mark.parametrize(
    ("version", "level", "extra", "url", "size"),
    [
        (2, 2, {}, "full/555,/0/default.jpg", (555, 832)),
        (3, 1, {}, "full/555,832/0/default.jpg", (555, 832)),
        (3, 2, {"max_width": 400, "max_height": 400}, "full/267,400/0/default.jpg", (267, 400)),
        (2, 2, {"max_area": 100_000}, "full/258,/0/default.jpg", (258, 387)),
        # Level 0: the smallest listed size long enough, else the largest above the input size.
        (
            3,
            0,
            {"sizes": ((500, 750), (1000, 1500), (2000, 3000))},
            "full/1000,1500/0/default.jpg",
            (1000, 1500),
        ),
        (2, 0, {"sizes": ((250, 375), (500, 750))}, "full/500,/0/default.jpg", (500, 750)),
        (3, 0, {"sizes": ((100, 150),)}, "full/max/0/default.jpg", (4000, 6000)),
        (2, 0, {}, "full/full/0/default.jpg", (4000, 6000)),
    ],
)
def test_size_choice_by_level(version, level, extra, url, size) -> None:
    request = choose_request(service(version, level, **extra), max_side=832, min_side=416)
    assert request.url == f"https://img.example/iiif/p1/{url}"
    assert (request.width, request.height) == size
    assert (request.full_width, request.full_height) == (4000, 6000)


def test_small_images_are_never_upscaled() -> None:
    small = ImageService(id="http://x/i", version=3, level=2, width=600, height=400)
    assert choose_request(small, 832, 416).url == "http://x/i/full/max/0/default.jpg"


def test_service_parsing_is_lenient() -> None:
    v2 = parse_service(
        {
            "@id": "http://x/i/",
            "profile": ["http://iiif.io/api/image/2/level1.json", {"maxWidth": 900}],
        }
    )
    assert (v2.id, v2.version, v2.level, v2.max_width, v2.max_height) == (
        "http://x/i",
        2,
        1,
        900,
        900,
    )
    bare = parse_service({"@id": "http://x/j"}, default_version=3)
    assert (bare.version, bare.level) == (3, 0)  # no profile: only listed sizes or full
    auth = {
        "@context": "http://iiif.io/api/auth/1/context.json",
        "@id": "http://x/login",
        "profile": "http://iiif.io/api/auth/1/login",
    }
    assert (
        parse_service([auth, {"id": "http://x/k", "type": "ImageService3", "profile": "level2"}]).id
        == "http://x/k"
    )
    assert (
        parse_service({"@context": "http://iiif.io/api/image/1/context.json", "@id": "http://x/l"})
        is None
    )


def test_v3_manifest_choice_fragment_and_skips() -> None:
    def anno(body, target="http://x/c1"):
        return {
            "type": "AnnotationPage",
            "items": [
                {"type": "Annotation", "motivation": "painting", "body": body, "target": target}
            ],
        }

    manifest = {
        "@context": "http://iiif.io/api/presentation/3/context.json",
        "id": "http://x/m",
        "type": "Manifest",
        "label": {"fr": ["Livre"]},
        "items": [
            {
                "id": "http://x/c1",
                "type": "Canvas",
                "width": 2000,
                "height": 3000,
                "label": {"none": ["1r"]},
                "items": [
                    anno(
                        {
                            "type": "Choice",
                            "items": [
                                {
                                    "id": "http://x/a.jpg",
                                    "type": "Image",
                                    "service": {
                                        "id": "http://x/a",
                                        "type": "ImageService3",
                                        "profile": "level1",
                                    },
                                },
                                {"id": "http://x/b.jpg", "type": "Image"},
                            ],
                        },
                        "http://x/c1#xywh=100,200,1000,1500",
                    )
                ],
            },
            {
                "id": "http://x/c2",
                "type": "Canvas",
                "items": [anno({"id": "http://x/s.mp3", "type": "Sound"})],
            },
            {"id": "http://x/c3", "type": "Canvas", "items": []},
        ],
    }
    doc = parse_document(manifest)
    assert (doc.kind, doc.version, doc.label) == ("manifest", 3, "Livre")
    first, sound, empty = doc.canvases
    assert first.image.url == "http://x/a.jpg" and first.image.service.level == 1
    assert first.image.region == (100, 200, 1000, 1500)
    assert sound.image is None and "sound" in sound.skip_reason
    assert empty.image is None and "no painting" in empty.skip_reason


def test_v2_manifest_without_service_or_profile() -> None:
    manifest = {
        "@id": "http://x/m",
        "@type": "sc:Manifest",
        "label": [{"@value": "Codex", "@language": "la"}],
        "sequences": [
            {
                "canvases": [
                    {
                        "@id": "http://x/c1",
                        "@type": "sc:Canvas",
                        "width": "1000",
                        "height": 1500,
                        "images": {
                            "@type": "oa:Annotation",
                            "resource": {"@id": "http://x/1.jpg", "@type": "dctypes:Image"},
                        },
                    },
                ]
            }
        ],
    }
    doc = parse_document(manifest)
    assert (doc.version, doc.label) == (2, "Codex")
    (canvas,) = doc.canvases
    assert (canvas.width, canvas.height) == (1000, 1500)
    assert canvas.image.url == "http://x/1.jpg" and canvas.image.service is None


def _v2_canvas(n: int) -> dict:
    return {
        "@id": f"http://x/c{n}",
        "@type": "sc:Canvas",
        "label": f"p{n}",
        "width": 100,
        "height": 100,
        "images": [{"resource": {"@id": f"http://x/{n}.jpg", "@type": "dctypes:Image"}}],
    }


def test_v2_canvases_of_every_sequence_each_once() -> None:
    """A canvas only in a later sequence is analysed; one named twice is analysed once; one
    only named by id, described nowhere, is skipped with the reason."""
    manifest = {
        "@context": "http://iiif.io/api/presentation/2/context.json",
        "@id": "http://x/m",
        "@type": "sc:Manifest",
        "sequences": [
            {"canvases": [_v2_canvas(1), _v2_canvas(2), "http://x/c4"]},
            {"canvases": ["http://x/c2", _v2_canvas(1), _v2_canvas(3), "http://x/c9"]},
            {"canvases": [_v2_canvas(4)]},
        ],
    }
    canvases = parse_document(manifest).canvases
    assert [c.id for c in canvases] == [f"http://x/c{n}" for n in (1, 2, 4, 3, 9)]
    assert [c.image.url for c in canvases[:4]] == [f"http://x/{n}.jpg" for n in (1, 2, 4, 3)]
    assert canvases[4].image is None
    assert canvases[4].skip_reason == "sequence 2 names this canvas without describing it"


def test_prefetch_is_bounded_and_stops_without_waiting() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> int:
        with lock:
            started.append(n)
        return n

    prefetch = Prefetcher(range(100), work, lambda n, e: -1, threads=3, depth=4)
    time.sleep(0.3)
    # 4 queued + at most one finished item per thread waiting for a slot.
    assert len(started) <= 4 + 3
    batch = prefetch.next_batch(2, poll=lambda: None)
    assert len(batch) == 2
    prefetch.close()
    time.sleep(0.5)
    assert len(started) < 20
    assert all(not t.is_alive() for t in prefetch._threads)


def test_prefetch_poll_can_abort_while_waiting() -> None:
    release = threading.Event()
    prefetch = Prefetcher([1], lambda n: release.wait(5) and n, lambda n, e: -1, threads=1, depth=1)

    class Cancelled(Exception):
        pass

    def poll() -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        prefetch.next_batch(4, poll=poll)
    release.set()
    prefetch.close()


def test_prefetch_turns_errors_into_results() -> None:
    def work(n: int) -> int:
        if n == 2:
            raise RuntimeError("boom")
        return n

    with Prefetcher(range(4), work, lambda n, e: -n, threads=2, depth=2) as prefetch:
        results = []
        while batch := prefetch.next_batch(3, poll=lambda: None):
            results += batch
    assert sorted(results) == [-2, 0, 1, 3]


ITEMS = [
    {
        "index": 0,
        "status": "ok",
        "manifest": 0,
        "canvas_id": "http://x/c1",
        "coordinates": "canvas",
        "canvas_width": 2000,
        "canvas_height": 1000,
        "width": 500,
        "height": 250,
        "detections": [{"xywh": [100, 100, 400, 200], "confidence": 0.91, "label": "illustration"}],
    },
    {"index": 1, "status": "failed", "manifest": 0, "canvas_id": "http://x/c2", "detections": []},
]


def test_annotation_page_v3_and_list_v2() -> None:
    links = ResultLinks("http://api/result/t")
    page = annotation_page({"index": 0, "version": 3, "label": "Book"}, ITEMS, links)
    assert page["type"] == "AnnotationPage" and len(page["items"]) == 1
    assert page["id"] == "http://api/result/t/iiif/manifest/0/annotations"
    anno = page["items"][0]
    # Its id: its canvas's page (the item's index stands in for a canvas_index it lacks).
    assert anno["id"] == "http://api/result/t/iiif/manifest/0/canvas/0/annotations#detection-0"
    assert anno["target"] == "http://x/c1#xywh=100,100,400,200"
    assert anno["motivation"] == ["commenting", "tagging"]
    assert [b["value"] for b in anno["body"]] == ["illustration", "confidence 0.91"]
    v2 = annotation_page({"index": 0, "version": 2, "label": "Book"}, ITEMS, links)
    assert v2["@type"] == "sc:AnnotationList" and v2["resources"][0]["on"] == anno["target"]
    shared = annotation_page({"index": 0, "version": 3}, ITEMS, ResultLinks("http://a", "t/k"))
    assert shared["id"] == "http://a/iiif/manifest/0/annotations?token=t%2Fk"


def test_yolo_archive_normalises_to_the_canvas() -> None:
    archive = zipfile.ZipFile(
        io.BytesIO(yolo_archive(ITEMS, ["illustration"], [{"index": 0, "label": "Book"}]))
    )
    (label,) = [n for n in archive.namelist() if n.startswith("labels/")]
    cls, cx, cy, w, h, conf = archive.read(label).decode().split()
    assert (cls, float(cx), float(cy), float(w), float(h), float(conf)) == (
        "0",
        0.15,
        0.2,
        0.2,
        0.2,
        0.91,
    )
    assert (
        archive.read("annotations/manifest0_Book.txt").decode().splitlines()[1] == "100 100 400 200"
    )
