"""One request per page where the manifest says enough: the image request planned from the
service the manifest declares (level, size), info.json read only when needed — once per service,
kept across tasks in Redis — and a refused computed request planned again from info.json. No
stack: a counting info.json getter, a fake fetcher, a bare redis-server for the cache."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import redis
from PIL import Image
from redis.backoff import NoBackoff
from redis.retry import Retry

from model.iiif.image_api import parse_service
from model.iiif.info_cache import InfoCache
from model.iiif.loader import CanvasTask, ManifestSummary
from model.iiif.negotiate import ServiceInfo, plan_request
from model.iiif.presentation import Canvas, CanvasImage
from model.jobs.loading import PageLoader
from model.jobs.units import WorkUnit
from model.pipeline.cache import DetectionCache
from model.sources.fetch import FetchError
from testkit.stack import free_port

ID = "https://img.example/iiif/p1"
V2_LEVEL = "http://iiif.io/api/image/2/level{}.json"


class Infos:
    """An info.json getter that counts its calls (and fails when told to)."""

    def __init__(self, doc: dict[str, Any] | None = None, error: Exception | None = None):
        self.doc = doc
        self.error = error
        self.urls: list[str] = []

    def __call__(self, url: str) -> Any:
        self.urls.append(url)
        if self.error is not None:
            raise self.error
        return self.doc


def info_v3(level: int = 2, width: int = 1200, height: int = 1600, **extra: Any) -> dict:
    return {
        "@context": "http://iiif.io/api/image/3/context.json",
        "id": ID,
        "type": "ImageService3",
        "profile": f"level{level}",
        "width": width,
        "height": height,
        **extra,
    }


def image(service: dict[str, Any] | None, width: int | None = 1200, height: int | None = 1600):
    parsed = parse_service(service) if service is not None else None
    return CanvasImage(f"{ID}/full/full/0/default.jpg", width, height, parsed)


def plan(img: CanvasImage, infos: Infos, canvas=(None, None), read_info=False, **kw):
    return plan_request(img, ServiceInfo(infos, **kw), 832, 416, canvas, read_info)


# --- the declaration, as manifests write it -------------------------------------------------


@pytest.mark.parametrize(
    ("service", "version", "level", "declared"),
    [
        ({"@id": ID, "profile": V2_LEVEL.format(1)}, 2, 1, True),
        ({"@id": ID, "profile": [V2_LEVEL.format(2), {"maxWidth": 2000}]}, 2, 2, True),
        ({"id": ID, "type": "ImageService3", "profile": "level1"}, 3, 1, True),
        ({"id": ID, "type": "ImageService2", "profile": "level2"}, 2, 2, True),
        ({"id": ID, "type": "ImageService3", "profile": "level0"}, 3, 0, True),
        ({"@id": ID, "@context": "http://iiif.io/api/image/2/context.json"}, 2, 0, False),
        ({"id": ID, "type": "ImageService3"}, 3, 0, False),
    ],
)
def test_declared_level_is_read_from_v2_and_v3_profiles(service, version, level, declared):
    parsed = parse_service(service)
    assert (parsed.version, parsed.level, parsed.level_declared) == (version, level, declared)


# --- computed from the manifest: no info.json -----------------------------------------------


@pytest.mark.parametrize(
    ("service", "size"),
    [
        ({"@id": ID, "profile": V2_LEVEL.format(1)}, "624,"),
        ({"@id": ID, "profile": [V2_LEVEL.format(2), {"formats": ["png"]}]}, "624,"),
        # 3.0 as well asks `w,` (not the canonical `w,h`): the size is the manifest's.
        ({"id": ID, "type": "ImageService3", "profile": "level1"}, "624,"),
        ({"id": ID, "type": "ImageService3", "profile": "level2"}, "624,"),
        ({"id": ID, "type": "ImageService2", "profile": "level2"}, "624,"),
        # A limit the manifest gives is honoured (maxHeight defaults to maxWidth: 225x300).
        ({"id": ID, "type": "ImageService3", "profile": "level2", "maxWidth": 300}, "225,"),
    ],
)
def test_declared_level_and_image_size_compute_the_request(service, size) -> None:
    infos = Infos(error=AssertionError("info.json read"))
    request = plan(image(service), infos)
    assert request.url == f"{ID}/full/{size}/0/default.jpg"
    assert request.method == "computed" and request.choice == "scaled"
    assert infos.urls == []


def test_canvas_size_stands_in_when_the_image_has_none() -> None:
    infos = Infos(error=AssertionError("info.json read"))
    service = {"id": ID, "type": "ImageService3", "profile": "level1"}
    request = plan(image(service, None, None), infos, canvas=(3000, 2000))
    assert request.url == f"{ID}/full/832,/0/default.jpg"
    assert (request.width, request.height) == (832, 555)
    assert infos.urls == []


@pytest.mark.parametrize(("version", "full"), [(2, "full"), (3, "max")])
def test_small_image_is_asked_whole_through_the_service(version: int, full: str) -> None:
    service = {"id": ID, "type": f"ImageService{version}", "profile": "level2"}
    request = plan(image(service, 600, 800), Infos(error=AssertionError("info.json read")))
    assert request.url == f"{ID}/full/{full}/0/default.jpg"
    assert request.method == "computed" and request.choice == "full"


def test_level0_with_listed_sizes_picks_one_without_info_json() -> None:
    service = {
        "id": ID,
        "type": "ImageService3",
        "profile": "level0",
        "sizes": [{"width": 300, "height": 400}, {"width": 900, "height": 1200}],
    }
    infos = Infos(error=AssertionError("info.json read"))
    request = plan(image(service), infos)
    assert request.url == f"{ID}/full/900,1200/0/default.jpg"
    assert request.method == "sizes" and infos.urls == []


# --- info.json only when needed ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "img_size", "canvas"),
    [
        ({"id": ID, "type": "ImageService3", "profile": "level0"}, (1200, 1600), (None, None)),
        ({"id": ID, "type": "ImageService3"}, (1200, 1600), (None, None)),  # level unknown
        ({"@id": ID}, (1200, 1600), (None, None)),
        ({"id": ID, "type": "ImageService3", "profile": "level2"}, (None, None), (None, None)),
    ],
    ids=["level0-no-sizes", "v3-no-profile", "v2-no-profile", "no-size-known"],
)
def test_info_json_is_read_when_the_manifest_does_not_say_enough(service, img_size, canvas):
    infos = Infos(info_v3(level=2))
    request = plan(image(service, *img_size), infos, canvas=canvas)
    assert infos.urls == [f"{ID}/info.json"]
    assert request.method == "info.json"
    assert request.url == f"{ID}/full/624,832/0/default.jpg"  # canonical 3.0 form


def test_info_json_is_read_once_per_service_in_a_task() -> None:
    infos = Infos(info_v3(level=2))
    services = ServiceInfo(infos)
    img = image({"id": ID, "type": "ImageService3"})
    for _ in range(3):
        assert plan_request(img, services, 832, 416).method == "info.json"
    assert len(infos.urls) == 1


def test_planning_again_reads_info_json_even_when_declared() -> None:
    """After the server refused the computed request, info.json decides."""
    infos = Infos(info_v3(level=0, sizes=[{"width": 600, "height": 800}]))
    img = image({"id": ID, "type": "ImageService3", "profile": "level2"})
    request = plan(img, infos, read_info=True)
    assert infos.urls == [f"{ID}/info.json"]
    assert request.method == "info.json" and request.url == f"{ID}/full/600,800/0/default.jpg"


def test_level2_without_any_size_or_info_json_fits_a_box_not_the_full_image() -> None:
    infos = Infos(error=FetchError("http_error", "HTTP 404", 404))
    img = image({"id": ID, "type": "ImageService3", "profile": "level2"}, None, None)
    request = plan(img, infos)
    assert request.url == f"{ID}/full/!832,832/0/default.jpg"
    assert request.method == "computed" and "info.json unavailable" in request.notes[0]


def test_undeclared_level_without_info_json_falls_back_to_the_image() -> None:
    infos = Infos(error=FetchError("http_error", "HTTP 404", 404))
    request = plan(image({"id": ID, "type": "ImageService3"}), infos)
    assert request.method == "image" and request.url == f"{ID}/full/full/0/default.jpg"


def test_info_json_without_a_level_keeps_the_declared_one() -> None:
    doc = info_v3()
    del doc["profile"]
    infos = Infos(doc)
    img = image({"id": ID, "type": "ImageService3", "profile": "level2"})
    request = plan(img, infos, read_info=True)
    assert request.url == f"{ID}/full/624,832/0/default.jpg"


# --- the cache across tasks -------------------------------------------------------------------


def test_second_task_reads_no_info_json(clean_redis: redis.Redis) -> None:
    img = image({"id": ID, "type": "ImageService3"})
    first, second = Infos(info_v3(level=2, sizes=[{"width": 300, "height": 400}])), Infos()
    one = plan(img, first, cache=InfoCache(clean_redis))
    two = plan(img, second, cache=InfoCache(clean_redis))
    assert (len(first.urls), len(second.urls)) == (1, 0)
    assert one == two and two.url == f"{ID}/full/624,832/0/default.jpg"
    key = InfoCache.key(img.service)
    assert 86_000 < clean_redis.ttl(key) <= 86_400
    kept = InfoCache(clean_redis).get(img.service)
    assert kept.sizes == ((300, 400),) and kept.level == 2


def test_failures_and_oversized_descriptions_are_not_kept(clean_redis: redis.Redis) -> None:
    img = image({"id": ID, "type": "ImageService3"})
    plan(img, Infos(error=FetchError("http_error", "HTTP 503", 503)), cache=InfoCache(clean_redis))
    assert clean_redis.keys("sc:iiif-info:*") == []
    many = [{"width": w, "height": w} for w in range(1, 3000)]
    plan(img, Infos(info_v3(sizes=many)), cache=InfoCache(clean_redis))
    assert clean_redis.keys("sc:iiif-info:*") == []


def test_damaged_entry_is_a_miss(clean_redis: redis.Redis) -> None:
    img = image({"id": ID, "type": "ImageService3"})
    for damaged in ["not json", json.dumps([1, 2]), json.dumps({"id": ID})]:
        clean_redis.set(InfoCache.key(img.service), damaged)
        infos = Infos(info_v3())
        assert plan(img, infos, cache=InfoCache(clean_redis)).method == "info.json"
        assert len(infos.urls) == 1


def test_no_redis_or_redis_down_means_no_cache() -> None:
    img = image({"id": ID, "type": "ImageService3"})
    # No retries: redis-py's default backoff made each refused connection cost seconds.
    down = redis.Redis(
        port=free_port(),
        socket_connect_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    for cache in (None, InfoCache(None), InfoCache(down)):
        infos = Infos(info_v3())
        assert plan(img, infos, cache=cache).url == f"{ID}/full/624,832/0/default.jpg"
        assert len(infos.urls) == 1


# --- a refused computed request is planned again from info.json (PageLoader) --------------------


class Fetcher:
    """Answers image URLs from a table (status or bytes); records what was asked."""

    def __init__(self, answers: dict[str, int | bytes]) -> None:
        self.answers = answers
        self.urls: list[str] = []

    def get(self, url: str, **_: Any) -> Any:
        self.urls.append(url)
        answer = self.answers.get(url, 404)
        if isinstance(answer, int):
            raise FetchError("http_error", f"HTTP {answer} from {url}", answer)
        return type("Result", (), {"content": answer})()


def _jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, format="JPEG")
    return buffer.getvalue()


def _load(img: CanvasImage, fetcher: Fetcher, infos: Infos) -> Any:
    canvas = Canvas("https://x/c/0", "p", 1200, 1600, img)
    summary = ManifestSummary(0, "https://x/m", "https://x/m", "m", 3)
    unit = WorkUnit(0, canvas.id, canvas=CanvasTask(summary, canvas, 0))
    loader = PageLoader(
        fetcher=fetcher,
        services=ServiceInfo(infos),
        cache=DetectionCache(None, 0, 0),
        params_key="k",
        max_side=832,
        min_side=416,
        max_pixels=10**8,
    )
    return loader(unit)


COMPUTED = f"{ID}/full/624,/0/default.jpg"
CANONICAL = f"{ID}/full/624,832/0/default.jpg"


@pytest.mark.parametrize("status", [400, 403, 501])
def test_refused_computed_request_is_planned_again_from_info_json(status: int) -> None:
    fetcher = Fetcher({COMPUTED: status, CANONICAL: _jpeg(624, 832)})
    infos = Infos(info_v3(level=2))
    img = image({"id": ID, "type": "ImageService3", "profile": "level2"})
    prepared = _load(img, fetcher, infos)
    assert prepared.error is None
    assert fetcher.urls == [COMPUTED, CANONICAL] and len(infos.urls) == 1
    assert prepared.item["image_url"] == CANONICAL
    assert prepared.item["request"]["method"] == "info.json"
    assert f"HTTP {status}" in prepared.item["notes"][0]


def test_missing_image_is_not_planned_again() -> None:
    fetcher = Fetcher({COMPUTED: 404})
    infos = Infos(info_v3(level=2))
    prepared = _load(
        image({"id": ID, "type": "ImageService3", "profile": "level2"}), fetcher, infos
    )
    assert prepared.error and prepared.error[0] == "http_error"
    assert fetcher.urls == [COMPUTED] and infos.urls == []


def test_planning_again_to_the_same_request_does_not_ask_twice() -> None:
    # 2.x asks `w,` either way: info.json confirms level 2, so the refusal stands.
    service = {"@id": ID, "profile": V2_LEVEL.format(2)}
    fetcher = Fetcher({COMPUTED: 501})
    infos = Infos(
        {
            "@context": "http://iiif.io/api/image/2/context.json",
            "@id": ID,
            "profile": [V2_LEVEL.format(2)],
            "width": 1200,
            "height": 1600,
        }
    )
    prepared = _load(image(service), fetcher, infos)
    assert prepared.error and "HTTP 501" in prepared.error[1]
    assert fetcher.urls == [COMPUTED] and len(infos.urls) == 1


def test_refused_again_with_info_json_unavailable_takes_the_image() -> None:
    full = f"{ID}/full/full/0/default.jpg"
    fetcher = Fetcher({COMPUTED: 501, full: _jpeg(1200, 1600)})
    infos = Infos(error=FetchError("http_error", "HTTP 404", 404))
    prepared = _load(
        image({"id": ID, "type": "ImageService3", "profile": "level1"}), fetcher, infos
    )
    assert prepared.error is None and fetcher.urls == [COMPUTED, full]
    assert prepared.item["request"]["method"] == "image"
