"""The detect job: find the illustrations on images (URLs, uploads) and on the canvases of IIIF
manifests. This module declares it (request models, inputs, limits); the work is in
model/jobs/detect_run.py, imported by the worker only (PIL, the fetcher, the prefetcher)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.jobs.contract import (
    ImageUpload,
    ImageUrl,
    InputRejected,
    ManifestUpload,
    ManifestUrl,
    TaskInput,
)
from model.jobs.fields import bounded_integer
from model.jobs.items import DetectPage
from model.jobs.spec import JobSpec
from model.settings import JobLimits, Settings
from model.urls import HTTP_URL_PATTERN, check_http_url, url_list_schema

if TYPE_CHECKING:
    from model.jobs.context import JobContext

# Without an explicit max_side, IIIF images are requested at this many times the model's input
# size: enough detail for the one shrink to the model's input, far fewer pixels to move.
MAX_SIDE_FACTOR = 2


class DetectParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, description="Model name from GET /models; default if omitted")
    confidence: float = Field(0.25, ge=0.0, le=1.0, description="Minimum detection confidence")
    iou: float = Field(0.45, ge=0.0, le=1.0, description="IoU threshold of non-maximum suppression")
    max_side: bounded_integer(32, 20000) | None = Field(  # type: ignore[valid-type]
        None,
        description="Longest image side requested from IIIF image services (px); the model sees "
        "at most its own input size; default 2x model size",
    )


class DetectInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    image_urls: list[str] = Field(
        default_factory=list,
        description="http(s) URLs of images",
        json_schema_extra=url_list_schema(),
    )
    manifest_url: str | None = Field(
        None,
        description="http(s) URL of a IIIF manifest or collection (Presentation 2.x/3.0)",
        json_schema_extra={"pattern": HTTP_URL_PATTERN},
    )
    manifest_urls: list[str] = Field(
        default_factory=list,
        description="http(s) URLs of IIIF manifests or collections",
        json_schema_extra=url_list_schema(),
    )

    @field_validator("image_urls", "manifest_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        # Only the shape is checked here; the worker's fetcher decides which hosts it may reach.
        for url in urls:
            check_http_url(url)
        return urls

    @field_validator("manifest_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None:
            check_http_url(url)
        return url

    def all_manifest_urls(self) -> list[str]:
        return ([self.manifest_url] if self.manifest_url else []) + self.manifest_urls


def task_inputs(request_input: DetectInput) -> list[TaskInput]:
    """Image URLs first, in order, then manifests (uploads are added by the API in between)."""
    return [
        *(ImageUrl(url=url) for url in request_input.image_urls),
        *(ManifestUrl(url=url) for url in request_input.all_manifest_urls()),
    ]


def check(_input: DetectInput, inputs: list[TaskInput], settings: Settings) -> None:
    images = sum(isinstance(e, ImageUrl | ImageUpload) for e in inputs)
    manifests = sum(isinstance(e, ManifestUrl | ManifestUpload) for e in inputs)
    if not images and not manifests:
        raise InputRejected(
            "no_input",
            "give input.image_urls or input.manifest_url(s), or upload 'images' or a 'manifest'",
        )
    if manifests > settings.iiif.max_manifests:
        raise InputRejected(
            "too_many_manifests", f"at most {settings.iiif.max_manifests} manifests per task"
        )
    most = SPEC.limits_in(settings).max_images
    if images > most:
        raise InputRejected("too_many_images", f"at most {most} images per detect task")


def input_schema(ref: str) -> dict[str, Any]:
    """At least one image or manifest URL (uploads are the other way to give work)."""
    return {
        "allOf": [{"$ref": ref}],
        "anyOf": [
            {"required": ["image_urls"], "properties": {"image_urls": {"minItems": 1}}},
            {"required": ["manifest_url"], "properties": {"manifest_url": {"type": "string"}}},
            {"required": ["manifest_urls"], "properties": {"manifest_urls": {"minItems": 1}}},
        ],
    }


def run(ctx: JobContext) -> None:
    from model.jobs.detect_run import run_detect

    run_detect(ctx)


SPEC = JobSpec(
    name="detect",
    summary="detect: find the illustrations on images or IIIF canvases",
    params=DetectParams,
    input=DetectInput,
    run=run,
    item=DetectPage,
    docs="docs/api.md#keys-and-calls",
    task_inputs=task_inputs,
    check=check,
    uploads=True,
    model_fields={"model": "detect"},
    limits=JobLimits(timeout_default_s=600, timeout_max_s=3600, max_images=500),
    # Images count at once; a manifest's canvases once the worker has read it.
    initial_total=lambda inputs: sum(isinstance(e, ImageUrl | ImageUpload) for e in inputs),
    input_schema=input_schema,
)
