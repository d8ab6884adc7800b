"""Pick the image request for a canvas, in as few requests as the manifest allows.

- The manifest's embedded service declares level 1/2 and the image (or canvas) size is known:
  the sized request is computed at once (`w,`), one request per page, no info.json.
- It declares level 0 and lists sizes: the best listed size, no info.json either.
- Otherwise (level unknown, level 0 without sizes, no size known) the service's info.json is
  read — once per service per task, and kept across tasks when a cache is given — and the
  request chosen from it; without it, the image resource itself (or, at level 2 with no size
  known, the best fit `!w,h`).
A computed request the server refuses is planned again from info.json (loading.py).
"""

from __future__ import annotations

import threading
from dataclasses import replace

from model.iiif.image_api import (
    ImageRequest,
    ImageService,
    choose_request,
    confined_request,
    parse_info,
)
from model.iiif.info_cache import InfoCache
from model.iiif.jsonld import InvalidNumber
from model.iiif.loader import JsonGetter
from model.iiif.presentation import CanvasImage
from model.sources.fetch import FetchError

Size = tuple[int | None, int | None]


class ServiceInfo:
    """info.json documents of one task, each read once even when download threads race, and
    from `cache` (shared across tasks) when it has them."""

    def __init__(self, get_json: JsonGetter, cache: InfoCache | None = None) -> None:
        self.get_json = get_json
        self.cache = cache
        self._known: dict[str, ImageService | str] = {}  # service id -> description or error
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}

    def describe(self, service: ImageService) -> tuple[ImageService, str | None]:
        """The service completed by its info.json, or as embedded plus the reason why not."""
        while True:
            with self._lock:
                known = self._known.get(service.id)
                if known is not None:
                    return _outcome(service, known)
                waiting = self._inflight.get(service.id)
                if waiting is None:
                    self._inflight[service.id] = threading.Event()
                    break
            waiting.wait()
        # Whatever happens while reading, the pages waiting on this service must be released
        # with an outcome, or they block until the task's time limit (threads leak meanwhile).
        result: ImageService | str = "info.json could not be read"
        try:
            result = self._read(service)
        finally:
            with self._lock:
                self._known[service.id] = result
                self._inflight.pop(service.id).set()
        return _outcome(service, result)

    def _read(self, service: ImageService) -> ImageService | str:
        """The service's description (kept, or read now and kept), or the problem."""
        kept = self.cache.get(service) if self.cache else None
        if kept is not None:
            return kept
        result = self._fetch(service)
        if self.cache and isinstance(result, ImageService):
            self.cache.put(service, result)
        return result

    def _fetch(self, service: ImageService) -> ImageService | str:
        """The service's description from its info.json, or the problem with it."""
        try:
            info = parse_info(self.get_json(service.info_url), service.id, service.version)
        except FetchError as exc:
            return f"info.json unavailable ({exc.code})"
        except InvalidNumber as exc:
            return f"info.json invalid ({exc})"
        except (ValueError, RecursionError):
            return "info.json is not valid JSON"
        except Exception as exc:  # noqa: BLE001 - a hostile document fails its pages, not the task
            return f"info.json could not be read ({type(exc).__name__})"
        return info if info is not None else "info.json does not describe an image service"


def _outcome(service: ImageService, known: ImageService | str) -> tuple[ImageService, str | None]:
    if isinstance(known, ImageService):
        return service.merged(known), None
    return service, known


def plan_request(
    image: CanvasImage,
    services: ServiceInfo,
    max_side: int,
    min_side: int,
    canvas_size: Size = (None, None),
    read_info: bool = False,
) -> ImageRequest:
    """The request to send for `image`: from the manifest when it declares enough, else via the
    service's info.json, else the image itself. `read_info`: skip the manifest's plan (the
    server refused it)."""
    service = image.service
    if service is None:
        return _image_request(image, [])
    size = known_size(service, image, canvas_size)
    if not read_info and (request := plan_from_manifest(service, size, max_side, min_side)):
        return request
    return _plan_from_info(image, service, services, size, max_side, min_side)


def known_size(service: ImageService, image: CanvasImage, canvas_size: Size) -> Size:
    """The image's size as the manifest gives it: the service's, the image's, else the canvas's
    (lenient: the canvas is usually the image's size, or at least its shape)."""
    for width, height in ((service.width, service.height), (image.width, image.height)):
        if width and height:
            return width, height
    return canvas_size


def plan_from_manifest(
    service: ImageService, size: Size, max_side: int, min_side: int
) -> ImageRequest | None:
    """The request the manifest's declaration alone allows, or None when info.json is needed."""
    width, height = size
    if not service.level_declared or not width or not height:
        return None
    sized = replace(service, width=width, height=height)
    if service.level >= 1:
        return choose_request(sized, max_side, min_side, method="computed")
    if service.sizes:
        return choose_request(sized, max_side, min_side, method="sizes")
    return None


def _plan_from_info(
    image: CanvasImage,
    embedded: ImageService,
    services: ServiceInfo,
    size: Size,
    max_side: int,
    min_side: int,
) -> ImageRequest:
    service, problem = services.describe(embedded)
    if problem is None:
        if not service.width or not service.height:
            service = replace(service, width=size[0], height=size[1])
        return choose_request(service, max_side, min_side)
    if embedded.level_declared and embedded.level >= 2 and not (size[0] and size[1]):
        # No size to compute `w,` from, but level 2 fits the image in a box without one.
        return replace(confined_request(embedded, max_side, "computed"), notes=[problem])
    if image.url:
        return _image_request(image, [f"{problem}: image resource fetched instead"])
    # Nothing else to fetch: the service as the manifest describes it.
    sized = replace(embedded, width=size[0], height=size[1])
    request = choose_request(sized, max_side, min_side, method="computed")
    return replace(request, notes=[problem, *request.notes])


def _image_request(image: CanvasImage, notes: list[str]) -> ImageRequest:
    if not image.url:
        raise ValueError("image without a URL or a service")
    return ImageRequest(
        image.url, image.width, image.height, image.width, image.height, "image", "image", notes
    )
