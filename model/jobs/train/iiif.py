"""A training set from IIIF ground truth (worker only): the manifest's annotated canvases, each
image fetched as detect fetches it (the task's fetcher: timeout, size cap, SSRF guard; IIIF size
negotiation asks for about the training size), boxes read by evaluate's reader
(model/jobs/evaluate/iiif_truth.py) and moved from canvas to image pixels.

A canvas that cannot be used (image not loaded, boxes outside the canvas, boxes without a label
and no default, nothing left on the image) is skipped with its reason, as a bad page of a YOLO
zip is; fewer than two usable pages fails the task (`too_few_pages`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from model.jobs import JobFailed
from model.jobs.evaluate.groundtruth import TruthBox, labels_of, outside_canvas
from model.jobs.evaluate.iiif_truth import gather, on_canvases
from model.jobs.loading import PageLoader, Prepared
from model.jobs.pages import Pages, open_pages
from model.jobs.train import MIN_PAGES
from model.jobs.train.dataset import Dataset, DatasetError, Page
from model.jobs.units import WorkUnit
from model.pipeline.cache import BoundedCache

MIN_BOX_PX = 1.0  # a box clipped to the image down to less than this is no box


@dataclass
class CanvasPage:
    """One annotated canvas as loaded: the image (None: `error` says why), the part of the
    canvas it shows (x, y, w, h in canvas units) and the canvas's boxes."""

    name: str  # the page's file stem in the training set
    canvas: str
    canvas_size: tuple[float | None, float | None]
    truths: list[TruthBox]
    image: Image.Image | None = None
    region: tuple[float, float, float, float] = (0, 0, 0, 0)
    error: tuple[str, str] | None = None


@dataclass
class _Classes:
    """Class names in training order: the base model's first (its head is kept whole when the
    labels are its own), then new labels in order of appearance."""

    names: list[str] = field(default_factory=list)

    def add(self, label: str) -> None:
        if label not in self.names:
            self.names.append(label)


def _image_boxes(
    page: CanvasPage, labels: list[str]
) -> tuple[list[tuple[float, float, float, float]], list[str]]:
    """The page's boxes in image pixels, clipped to the image (a canvas may show its image on
    part of it only)."""
    assert page.image is not None
    rx, ry, rw, rh = page.region
    sx, sy = page.image.width / rw, page.image.height / rh
    boxes, kept = [], []
    for truth, label in zip(page.truths, labels, strict=True):
        x, y, w, h = truth.xywh
        x1, y1 = max(0.0, (x - rx) * sx), max(0.0, (y - ry) * sy)
        x2 = min(float(page.image.width), (x + w - rx) * sx)
        y2 = min(float(page.image.height), (y + h - ry) * sy)
        if x2 - x1 >= MIN_BOX_PX and y2 - y1 >= MIN_BOX_PX:
            boxes.append((x1, y1, x2 - x1, y2 - y1))
            kept.append(label)
    return boxes, kept


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def training_set(
    pages: list[CanvasPage], default_class: str | None, base_classes: list[str]
) -> Dataset:
    """The usable pages as a training Dataset; the others listed with their reasons."""
    default = default_class or (base_classes[0] if len(base_classes) == 1 else None)
    classes = _Classes(list(base_classes))
    usable: list[Page] = []
    skipped: list[dict[str, str]] = []
    for page in pages:

        def skip(code: str, message: str, canvas: str = page.canvas) -> None:
            skipped.append({"page": canvas, "reason": f"{code}: {message}"})

        if page.error is not None or page.image is None:
            skip(*(page.error or ("not_loaded", "the image was not loaded")))
            continue
        reason = outside_canvas(page.truths, page.canvas_size)
        labels = labels_of(page.truths, default) if reason is None else reason
        if isinstance(labels, tuple):
            skip(*labels)
            continue
        boxes, kept = _image_boxes(page, labels)
        if not boxes:
            skip("no_boxes", "no annotated box lies on the canvas's image")
            continue
        for label in kept:
            classes.add(label)
        size = page.image.size
        usable.append(Page(page.name, _png(page.image), size, boxes, kept, source=page.canvas))
    if len(usable) < MIN_PAGES:
        raise DatasetError(
            "too_few_pages",
            f"{len(usable)} usable annotated canvases; training needs {MIN_PAGES} at least "
            f"(skipped: {skipped[:5]})",
        )
    return Dataset(usable, classes.names, skipped)


def _loader(pages: Pages, imgsz: int) -> PageLoader:
    """Pages fetched as detect fetches them, decoded to the training size; no detection cache
    (a cache of nothing: the image is what is wanted)."""
    return pages.loader(
        cache=BoundedCache(None, 0, 0),
        params_key="train",
        max_side=2 * imgsz,
        min_side=imgsz,
        analyse_side=imgsz,
    )


def _canvas_page(unit: WorkUnit, prepared: Prepared, truths: list[TruthBox]) -> CanvasPage:
    canvas = unit.canvas.canvas  # type: ignore[union-attr]
    page = CanvasPage(
        f"p{unit.index:05d}", canvas.id, (canvas.width, canvas.height), truths, prepared.image
    )
    page.error = prepared.error
    width, height = prepared.decoded_size
    region = canvas.image.region if canvas.image else None
    page.region = region or (0, 0, canvas.width or width, canvas.height or height)
    return page


def read_iiif(ctx: Any, imgsz: int, default_class: str | None, base_classes: list[str]) -> Dataset:
    """The task's manifest and annotations as a training set (raises JobFailed when there is
    nothing to learn from)."""
    settings = ctx.resources.settings
    # Training's own provenance replaces this block once the model is trained; until then (and
    # on a cancel while reading) the status shows what reading the pages cost.
    with open_pages(ctx, {}) as pages:
        plan = pages.plan_task(record=False)  # the trained model's card names the manifest
        truths, problems = on_canvases(gather(ctx, plan, pages.fetcher), plan)
        units = [u for u in plan.units if u.canvas is not None and u.canvas.canvas.id in truths]
        if len(units) > settings.training.max_pages:
            raise JobFailed(
                "too_many_pages", f"at most {settings.training.max_pages} pages per training task"
            )
        canvases: list[CanvasPage] = []
        loader = _loader(pages, imgsz)
        with pages.batches(units, loader) as batches:
            for batch in batches:
                for prepared in batch:
                    unit = prepared.unit
                    truth = truths[unit.canvas.canvas.id]  # type: ignore[union-attr]
                    canvases.append(_canvas_page(unit, prepared, truth))
    dataset = training_set(canvases, default_class, base_classes)
    dataset.problems = problems
    return dataset
