"""Pick the image request for a canvas: read the service's info.json (what viewers do too) and
ask for only the pixels the detector needs; without a usable service, the image resource itself.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from model.iiif.image_api import ImageRequest, ImageService, choose_request, parse_info
from model.iiif.jsonld import InvalidNumber
from model.iiif.loader import JsonGetter
from model.iiif.presentation import CanvasImage
from model.sources.fetch import FetchError


class ServiceInfo:
    """info.json documents of one task, each read once even when download threads race."""

    def __init__(self, get_json: JsonGetter) -> None:
        self.get_json = get_json
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
        """The service's description, or the problem with its info.json."""
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
    canvas_size: tuple[int | None, int | None] = (None, None),
) -> ImageRequest:
    """The request to send for `image`: via its service when described, else the image itself."""
    notes: list[str] = []
    if image.service is not None:
        service, problem = services.describe(image.service)
        if problem is None or not image.url:
            if not service.width or not service.height:
                # Lenient: a service without a size borrows the manifest's (image, else canvas).
                known = (image.width, image.height) if image.width else canvas_size
                service = replace(service, width=known[0], height=known[1])
            request = choose_request(service, max_side, min_side)
            return replace(request, notes=[*([problem] if problem else []), *request.notes])
        notes.append(f"{problem}: image resource fetched instead")
    if not image.url:
        raise ValueError("image without a URL or a service")
    return ImageRequest(
        image.url, image.width, image.height, image.width, image.height, "image", notes
    )
