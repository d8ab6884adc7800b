"""The cluster job: group illustrations into families (recurring motifs, printers' ornaments,
diagram types), each with a prototype image — what the members share once aligned.

Items: each image URL or uploaded image (multipart part `images`) is one; each illustration a
finished detect task found is one (cut from its page through the IIIF image service where there
is one). Method and figures:
model/jobs/cluster/method.py, docs/cluster.md. Result: `clusters` (members, prototype URL,
cohesion), `unclustered`, and one result item per input item (failed ones with their reason).

Light: the HTTP process imports this module; the worker side is imported inside run().
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.jobs.contract import (
    TASK_ID_PATTERN,
    DatasetUpload,
    ImageUpload,
    ImageUrl,
    InputRejected,
    ManifestUpload,
    ManifestUrl,
    SourceTask,
    TaskInput,
)
from model.jobs.fields import Integer, bounded_integer
from model.jobs.items import ResultItem
from model.jobs.spec import JobSpec
from model.settings import JobLimits, Settings
from model.urls import check_http_url, url_list_schema

if TYPE_CHECKING:
    from model.jobs.context import JobContext

MAX_SOURCE_TASKS = 50
# The cluster job's feature extractor when a task names none: a motif embedding trained on
# synthetic families (scripts/train_motif_embed.py; docs/cluster.md, Round 5), not the
# similarity job's configured one
DEFAULT_EMBED_MODEL = "motif-embed"


class ClusterParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(
        None,
        description="Feature extractor (GET /models, task 'embed'); motif-embed if omitted",
    )
    min_cluster_size: Integer = Field(
        2, ge=2, le=1000, description="Smallest family; smaller groups are left unclustered"
    )
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Least verified similarity (0-1) that links two items; default 0.15",
    )
    clusters: bounded_integer(1, 10000) | None = Field(  # type: ignore[valid-type]
        None,
        description="Stop merging families once this many are left (instead of a threshold)",
    )
    neighbours: Integer = Field(
        8, ge=1, le=100, description="Candidates per item verified by local features"
    )
    min_confidence: float = Field(
        0.0, ge=0.0, le=1.0, description="task_ids: leave out detections below this confidence"
    )
    detector: str | None = Field(
        None, description="manifest_urls: detection model (GET /models, task 'detect')"
    )
    confidence: float = Field(0.25, ge=0.0, le=1.0, description="manifest_urls: detector threshold")


class ClusterInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    image_urls: list[str] = Field(
        default_factory=list,
        description="http(s) URLs of images: each image is one item",
        json_schema_extra=url_list_schema(),
    )
    task_ids: list[str] = Field(
        default_factory=list,
        description="Finished detect tasks of the same key: each detected illustration is one item",
        json_schema_extra={
            "maxItems": MAX_SOURCE_TASKS,
            "items": {"type": "string", "pattern": TASK_ID_PATTERN},
        },
    )

    manifest_urls: list[str] = Field(
        default_factory=list,
        description="http(s) URLs of IIIF manifests or collections: their illustrations are "
        "detected on the fly, each one an item",
        json_schema_extra=url_list_schema(),
    )

    @field_validator("image_urls", "manifest_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            check_http_url(url)
        return urls

    @field_validator("task_ids")
    @classmethod
    def _task_ids(cls, ids: list[str]) -> list[str]:
        import re

        if len(ids) > MAX_SOURCE_TASKS:
            raise ValueError(f"at most {MAX_SOURCE_TASKS} task ids")
        for task_id in ids:
            if not re.fullmatch(TASK_ID_PATTERN, task_id):
                raise ValueError(f"task id {task_id[:40]!r}: 32 lowercase hex digits")
        return ids


_WHERE = {
    "index": {"type": "integer", "description": "The item's result item (result.items[].index)"},
    "source": {
        "type": "string",
        "description": "What the item was made from, as its result item says: URL, upload:<name>",
    },
    "image_url": {"type": "string", "description": "URL inputs: the image"},
    "task_id": {"type": "string", "description": "Region inputs: the detect task"},
    "canvas_id": {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": "Region inputs: its canvas",
    },
    "xywh": {
        "type": "array",
        "items": {"type": "integer"},
        "description": "Region inputs: its box, in canvas coordinates (image pixels off IIIF)",
    },
    "region_url": {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": "The region cut by its IIIF image service, where one can cut it",
    },
}
# The result fields a cluster task adds beside items and provenance (GET /status, /result).
RESULT_SCHEMA: dict[str, Any] = {
    "clusters": {
        "type": "array",
        "description": "cluster tasks: the families, largest first",
        "items": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "size": {"type": "integer"},
                "prototype_url": {
                    "type": "string",
                    "description": "PNG: the members aligned onto the medoid and averaged",
                },
                "cohesion": {"type": "number", "description": "Mean member score (0-1)"},
                "medoid": {"type": "integer", "description": "Index of the reference member"},
                "aligned": {"type": "integer", "description": "Members in the prototype"},
                "members": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            **_WHERE,
                            "score": {
                                "type": "number",
                                "description": "Correlation with the prototype once aligned "
                                "(0-1; 0: could not be aligned)",
                            },
                        },
                    },
                },
            },
        },
    },
    "unclustered": {
        "type": "array",
        "description": "cluster tasks: items in no family",
        "items": {"type": "object", "properties": _WHERE},
    },
    "clustering": {
        "type": "object",
        "description": "cluster tasks: `state` not reached (the task ended while items were "
        "loading: the items so far are kept), running, done or skipped; counts",
        "properties": {"state": {"type": "string"}, "message": {"type": "string"}},
    },
}


def task_inputs(request_input: ClusterInput) -> list[TaskInput]:
    return [
        *(ImageUrl(url=url) for url in request_input.image_urls),
        *(SourceTask(task_id=task_id) for task_id in dict.fromkeys(request_input.task_ids)),
        *(ManifestUrl(url=url) for url in request_input.manifest_urls),
    ]


def _images(inputs: list[TaskInput]) -> int:
    """Image URLs and uploaded images: one item each."""
    return sum(isinstance(e, ImageUrl | ImageUpload) for e in inputs)


def check(_input: ClusterInput, inputs: list[TaskInput], settings: Settings) -> None:
    if any(isinstance(e, ManifestUpload | DatasetUpload) for e in inputs):
        raise InputRejected(
            "invalid_input", "cluster takes uploaded images only (manifests: input.manifest_urls)"
        )
    images = _images(inputs)
    tasks = sum(isinstance(e, SourceTask | ManifestUrl) for e in inputs)
    if images + tasks == 0 or (tasks == 0 and images < 2):
        raise InputRejected(
            "too_few_items",
            "give at least 2 items: input.image_urls, input.task_ids, input.manifest_urls "
            "and/or uploaded 'images'",
        )
    manifests = sum(isinstance(e, ManifestUrl) for e in inputs)
    if manifests > settings.iiif.max_manifests:
        raise InputRejected(
            "too_many_manifests", f"at most {settings.iiif.max_manifests} manifests per task"
        )
    most = SPEC.limits_in(settings).max_images
    if images > most:
        raise InputRejected("too_many_items", f"at most {most} items per cluster task")


def input_schema(ref: str) -> dict[str, Any]:
    return {
        "allOf": [{"$ref": ref}],
        "anyOf": [
            {"required": ["image_urls"], "properties": {"image_urls": {"minItems": 2}}},
            {"required": ["task_ids"], "properties": {"task_ids": {"minItems": 1}}},
            {"required": ["manifest_urls"], "properties": {"manifest_urls": {"minItems": 1}}},
        ],
    }


class ClusterItem(ResultItem):
    """One item clustered: an image (URL or upload), or an illustration (of a detect task, or
    found on a manifest's canvas). Families are in the result's `clusters`."""

    width: int | None = Field(None, description="The pixels clustered (px)")
    height: int | None = None
    image_url: str | None = Field(None, description="URL inputs: the image")
    task_id: str | None = Field(None, description="Region inputs: the detect task")
    page_index: int | None = Field(None, description="Region inputs: the detect task's item")
    canvas_id: str | None = Field(None, description="Its canvas (IIIF pages)")
    manifest: int | None = Field(None, description="Index of the manifest in provenance")
    page_url: str | None = Field(None, description="Regions: the page they were found on")
    xywh: list[int] | None = Field(
        None, description="Regions: the box, in canvas coordinates (image pixels off IIIF)"
    )
    coordinates: Literal["canvas", "image"] | None = None
    label: str | None = None
    confidence: float | None = None
    region_url: str | None = Field(
        None, description="The region cut by its IIIF image service, where one can cut it"
    )


def run(ctx: JobContext) -> None:
    from model.jobs.cluster.job import run_cluster

    run_cluster(ctx, ClusterParams(**ctx.spec.params))


SPEC = JobSpec(
    name="cluster",
    summary="cluster: group illustrations into families, each with a prototype image",
    params=ClusterParams,
    input=ClusterInput,
    run=run,
    item=ClusterItem,
    docs="docs/cluster.md",
    task_inputs=task_inputs,
    check=check,
    # Uploads alone (multipart with no `input`) are a request: check() asks for 2 items.
    input_required=False,
    uploads=True,
    model_fields={"model": "embed", "detector": "detect"},
    model_defaults={"model": DEFAULT_EMBED_MODEL},
    # max_images: the most items (images and detected illustrations) one task clusters
    limits=JobLimits(timeout_default_s=1800, timeout_max_s=7200, max_images=10000),
    initial_total=_images,
    input_schema=input_schema,
    source_task_types=("detect",),
)
