"""Pick the image request for a canvas: read the service's info.json (what viewers do too) and
ask for only the pixels the detector needs; without a usable service, the image resource itself.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from model.iiif.image_api import ImageRequest, ImageService, choose_request, parse_info
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
                if known is None:
                    waiting = self._inflight.get(service.id)
                    if waiting is None:
                        self._inflight[service.id] = threading.Event()
                        break
                else:
                    return (
                        (service.merged(known), None)
                        if isinstance(known, ImageService)
                        else (service, known)
                    )
            waiting.wait()
        result: ImageService | str
        try:
            info = parse_info(self.get_json(service.info_url), service.id, service.version)
            result = info if info is not None else "info.json does not describe an image service"
        except FetchError as exc:
            result = f"info.json unavailable ({exc.code})"
        except ValueError:
            result = "info.json is not valid JSON"
        with self._lock:
            self._known[service.id] = result
            self._inflight.pop(service.id).set()
        return (
            (service.merged(result), None)
            if isinstance(result, ImageService)
            else (service, result)
        )


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
