"""What a detect task would fetch for some manifests, without fetching any image: the canvases,
their labels, the image request chosen and its expected size, and the canvases skipped (why).
Backs `python -m model manifest`; users debug their manifests with it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from model.iiif.image_api import ImageService
from model.iiif.loader import Limits, ManifestError, json_getter, load, parse_json
from model.iiif.negotiate import ServiceInfo, plan_request
from model.settings import Settings
from model.sources.fetch import SafeFetcher


def preview(source: str, settings: Settings, max_side: int, min_side: int) -> dict[str, Any]:
    """Raises ManifestError when the manifest itself cannot be used."""
    fetcher = SafeFetcher.from_settings(settings.fetch)
    get_json = json_getter(fetcher, settings.iiif.max_json_bytes)
    path = Path(source)
    urls, uploads = [], []
    if "://" not in source and path.is_file():
        try:
            uploads.append((path.name, parse_json(path.read_bytes())))
        except ValueError as exc:
            raise ManifestError("manifest_invalid", f"{source}: not valid JSON") from exc
    else:
        urls.append(source)
    limits = Limits(
        settings.iiif.max_collection_depth, settings.iiif.max_canvases, settings.iiif.max_manifests
    )
    loaded = load(urls, uploads, get_json, limits)
    services = ServiceInfo(get_json)

    def describe(position: int) -> dict[str, Any]:
        task = loaded.canvases[position]
        canvas = task.canvas
        entry: dict[str, Any] = {
            "index": position,
            "manifest": task.manifest.index,
            "canvas_id": canvas.id,
            "label": canvas.label,
            "canvas_size": [canvas.width, canvas.height],
        }
        assert canvas.image is not None
        service = canvas.image.service
        if service is not None:
            entry["service"] = {"id": service.id, "version": service.version}
        try:
            request = plan_request(
                canvas.image, services, max_side, min_side, (canvas.width, canvas.height)
            )
        except ValueError as exc:
            return {**entry, "error": str(exc)}
        if service is not None:
            entry["service"]["level"] = _level(service, services, request.method)
        return {
            **entry,
            "request_url": request.url,
            "method": request.method,
            "choice": request.choice,
            "expected_size": [request.width, request.height],
            "full_size": [request.full_width, request.full_height],
            "notes": request.notes,
        }

    with ThreadPoolExecutor(max_workers=settings.fetch.per_host_concurrency) as pool:
        canvases = list(pool.map(describe, range(len(loaded.canvases))))
    return {
        "max_side": max_side,
        "manifests": [m.as_dict() for m in loaded.manifests],
        "canvases": canvases,
        "skipped": [
            {"manifest": m.index, **skipped} for m in loaded.manifests for skipped in m.skipped
        ],
        "problems": loaded.problems,
    }


def _level(service: ImageService, services: ServiceInfo, method: str) -> int | None:
    """The level the request was planned with: declared by the manifest, or read from info.json
    (already read while planning: no second fetch); None when neither says."""
    if method in ("computed", "sizes"):
        return service.level if service.level_declared else None
    described, problem = services.describe(service)
    if problem is None and described.level_declared:
        return described.level
    return service.level if service.level_declared else None
