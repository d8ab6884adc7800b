"""The vectorize job's result items: a page's or a region's primitives, in the same coordinates
as detect's boxes (canvas coordinates for IIIF canvases, else the image's pixels; a region's are
its page's). Light: the HTTP process imports it (the OpenAPI document's result schema)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from model.jobs.items import PageItem

ANGLE_NOTE = "degrees in [0, 360) of atan2(y - cy, x - cx), image coordinates (y down)"


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LinePrimitive(_Shape):
    kind: Literal["line"]
    p0: list[float] = Field(description="x, y of one end")
    p1: list[float] = Field(description="x, y of the other end")
    confidence: float = Field(description="Share of its length that is ink")


class CirclePrimitive(_Shape):
    kind: Literal["circle"]
    center: list[float] = Field(description="x, y")
    radius: float
    confidence: float = Field(description="Share of its ring that is ink")


class ArcPrimitive(_Shape):
    kind: Literal["arc"]
    center: list[float] = Field(description="x, y")
    radius: float
    start_deg: float = Field(description=f"Where it starts: {ANGLE_NOTE}")
    end_deg: float = Field(description="Where it ends, running by increasing angle from start")
    confidence: float = Field(description="Share of its span that is ink")


Primitive = Annotated[LinePrimitive | CirclePrimitive | ArcPrimitive, Field(discriminator="kind")]


class Region(_Shape):
    """The detect task's illustration a region item was made from."""

    xywh: list[int] = Field(description="Its box in the page's coordinates")
    label: str
    confidence: float
    image_url: str | None = Field(None, description="What was fetched: the region, or its page")


class VectorizeItem(PageItem):
    """A page (image, upload, canvas) or a detect task's illustration, as primitives."""

    primitives: list[Primitive] = Field(
        default_factory=list, description="The lines, circles and arcs found"
    )
    page_index: int | None = Field(None, description="Regions: the detect task's item")
    region: Region | None = Field(None, description="Regions: the illustration")
