"""The result items jobs emit, as models: one per page, image, region or epoch. Each job type
declares its item model (`JobSpec.item`); `emit()` validates and stores it once, and the API
derives the result schema of the OpenAPI document from the same models.

The page models here are shared by the jobs that read pages through the page pipeline (detect,
similarity, vectorize, evaluate); a job's own item lives in its module. Every field a job may
set is declared (extra fields are refused), so a stored item never carries an undocumented key.
A field left unset is not stored (`exclude_unset`): items keep exactly the keys their job set.

Torch-free and light: the HTTP process imports it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ItemError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str


class ResultItem(BaseModel):
    """What every result item has: its position, what it was made from, and how it went."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="Position in the task's items (progress counts them)")
    source: str = Field(description="What the item was made from: URL, upload:<name>, canvas id")
    status: Literal["ok", "failed"]
    error: ItemError | None = Field(None, description="Why a failed item failed")

    def stored(self) -> dict[str, Any]:
        """The item as stored and served: the fields its job set, as JSON, and `error` always
        (null on an ok item: clients read `item["error"]` on every item, as they always could)."""
        return {"error": None, **self.model_dump(mode="json", exclude_unset=True)}


class Detection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    xywh: list[int] = Field(
        description="x, y, width, height: in canvas coordinates for IIIF canvases, else in the "
        "original image's pixels"
    )
    confidence: float
    label: str


class PageRequest(BaseModel):
    """How a canvas's image was asked for (IIIF size negotiation)."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(
        description="computed (from the manifest's declaration), sizes (a size it lists), "
        "info.json (from the service's description) or image (the image resource, no service)"
    )
    choice: str = Field(description="scaled, confined, listed_size, full or image")
    expected_width: int | None = None
    expected_height: int | None = None
    full_width: int | None = Field(None, description="The full image's size, as the service says")
    full_height: int | None = None
    service_id: str | None = Field(
        None,
        description="The IIIF image service the image was asked from (its base URI; null: the "
        "image resource itself): regions of the page are asked from it",
    )


class PageItem(ResultItem):
    """A page read by the page pipeline: an image URL, an upload or a IIIF canvas."""

    width: int | None = Field(None, description="Decoded image's size (px)")
    height: int | None = None
    cached: bool | None = Field(None, description="Analysis taken from the cache")
    bytes: int | None = Field(None, description="Bytes fetched (not for uploads)")
    timings: dict[str, float] | None = Field(None, description="Seconds spent in each stage")
    # IIIF canvases only:
    canvas_id: str | None = None
    label: str | None = None
    manifest: int | None = Field(None, description="Index of the manifest in provenance")
    canvas_index: int | None = Field(None, description="Position of the canvas in its manifest")
    canvas_width: int | None = None
    canvas_height: int | None = None
    coordinates: Literal["canvas", "image"] | None = Field(
        None, description="canvas: boxes are in canvas coordinates"
    )
    image_url: str | None = Field(None, description="Image request sent (size negotiated)")
    request: PageRequest | None = None
    notes: list[str] | None = Field(None, description="How the image request was planned")

    @property
    def image_service(self) -> str | None:
        """The IIIF image service the page was asked from (None: the image resource itself)."""
        return self.request.service_id if self.request else None

    def full_size_scale(self) -> tuple[float, float]:
        """From the page's box coordinates (canvas, or decoded image) to the full image's
        pixels (1, 1 where a size is unknown)."""
        full_w, full_h = (
            (self.request.full_width, self.request.full_height) if self.request else (None, None)
        )
        base_w, base_h = self.canvas_width or self.width, self.canvas_height or self.height
        if not (full_w and full_h and base_w and base_h):
            return 1.0, 1.0
        return full_w / base_w, full_h / base_h


class DetectPage(PageItem):
    """A detect item: the illustrations found on one page."""

    detections: list[Detection] = Field(default_factory=list)
