"""The evaluate job: how well a detection model finds what people annotated (docs/models.md).

Ground truth plus its images, one of:
- a IIIF manifest (`input.manifest_url`, or a `manifest` upload) with its annotations: inline
  (`input.annotations`: AnnotationPages, AnnotationLists), by URL (`input.annotation_urls`), or
  those the manifest itself embeds or references (3.0 `annotations`, 2.x `otherContent`). The
  service's own detect `format=iiif` output is accepted as it is (a user corrects it, sends it
  back);
- a YOLO dataset zip (`dataset` upload): images and one label .txt each, class names from a
  data.yaml or classes.txt in the zip, else the model's own.

This module declares the job (light: the API imports it); the work is in run.py (worker only).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.jobs.contract import (
    Annotations,
    AnnotationUrl,
    DatasetUpload,
    ImageUpload,
    InputRejected,
    ManifestUpload,
    ManifestUrl,
    TaskInput,
)
from model.jobs.evaluate.groundtruth import Parsed, parse
from model.jobs.evaluate.items import EvaluatePage
from model.jobs.fields import bounded_integer
from model.jobs.spec import JobSpec
from model.settings import JobLimits, Settings
from model.urls import HTTP_URL_PATTERN, check_http_url, url_list_schema

if TYPE_CHECKING:
    from model.jobs.context import JobContext


class EvaluateParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, description="Model name from GET /models; default if omitted")
    iou: float = Field(
        0.5, gt=0.0, le=1.0, description="IoU a detection needs to match a ground-truth box"
    )
    confidence: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Detections counted for TP/FP/FN, precision, recall and F1 (mAP uses all)",
    )
    default_class: str | None = Field(
        None,
        max_length=200,
        description="Label of annotations without one; default: the model's class if it has one",
    )
    class_agnostic: bool = Field(False, description="Match boxes whatever their labels")
    pages: Literal["annotated", "all"] = Field(
        "annotated",
        description="annotated: only canvases with a ground-truth box; all: every canvas (one "
        "without boxes has no illustration: whatever is found there is a false alarm)",
    )
    max_side: bounded_integer(32, 20000) | None = Field(  # type: ignore[valid-type]
        None, description="Longest image side requested from IIIF image services (px)"
    )


class EvaluateInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    manifest_url: str | None = Field(
        None,
        description="http(s) URL of the IIIF manifest whose canvases were annotated",
        json_schema_extra={"pattern": HTTP_URL_PATTERN},
    )
    annotations: list[Any] = Field(
        default_factory=list,
        description="Ground truth inline: AnnotationPages (3.0) or AnnotationLists (2.x), e.g. "
        "a detect task's format=iiif result as corrected in a viewer (size-capped: "
        "iiif.max_inline_annotation_bytes)",
    )
    annotation_urls: list[str] = Field(
        default_factory=list,
        description="http(s) URLs of AnnotationPages or AnnotationLists",
        json_schema_extra=url_list_schema(),
    )

    @field_validator("annotation_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            check_http_url(url)
        return urls

    @field_validator("manifest_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None:
            check_http_url(url)
        return url


def task_inputs(request_input: EvaluateInput) -> list[TaskInput]:
    inputs: list[TaskInput] = []
    if request_input.manifest_url:
        inputs.append(ManifestUrl(url=request_input.manifest_url))
    if request_input.annotations:
        inputs.append(Annotations(documents=request_input.annotations))
    inputs += [AnnotationUrl(url=url) for url in request_input.annotation_urls]
    return inputs


GROUND_TRUTH_WAYS = "input.manifest_url, a 'manifest' upload, a 'dataset' zip upload"


def check_ground_truth(
    request_input: EvaluateInput,
    inputs: list[TaskInput],
    settings: Settings,
    datasets: tuple[type, ...] = (DatasetUpload,),
    ways: str = GROUND_TRUTH_WAYS,
) -> Parsed | None:
    """One source of ground truth (a manifest, or a dataset of one of the `datasets` kinds) and
    inline annotations that hold a box: evaluate's and train's requests alike. Returns the inline
    annotations as read (None without any)."""
    manifests = sum(isinstance(e, ManifestUrl | ManifestUpload) for e in inputs)
    dataset_count = sum(isinstance(e, datasets) for e in inputs)
    if any(isinstance(e, ImageUpload) for e in inputs):
        raise InputRejected(
            "images_without_truth",
            "images alone carry no ground truth: upload a YOLO 'dataset' zip, or give a manifest",
        )
    if manifests + dataset_count != 1:
        raise InputRejected("one_ground_truth", f"give exactly one of: {ways}")
    if dataset_count and (request_input.annotations or request_input.annotation_urls):
        raise InputRejected("annotations_with_dataset", "a dataset zip carries its own labels")
    if not request_input.annotations:
        return None
    size = len(json.dumps(request_input.annotations, separators=(",", ":")).encode())
    most = settings.iiif.max_inline_annotation_bytes
    if size > most:
        raise InputRejected(
            "annotations_too_large",
            f"inline annotations may be {most} bytes; give them by URL or inside the manifest",
        )
    parsed = parse(request_input.annotations)
    if not parsed.boxes and not request_input.annotation_urls:
        problems = "; ".join(p["message"] for p in parsed.problems[:5])
        raise InputRejected(
            "no_boxes",
            "the inline annotations hold no box (xywh fragment or FragmentSelector on a "
            f"canvas){': ' + problems if problems else ''}",
        )
    return parsed


def check(request_input: EvaluateInput, inputs: list[TaskInput], settings: Settings) -> None:
    check_ground_truth(request_input, inputs, settings)


def run(ctx: JobContext) -> None:
    from model.jobs.evaluate.run import run_evaluate

    run_evaluate(ctx)


def input_schema(ref: str) -> dict[str, Any]:
    """A JSON request names its manifest (uploads, the other ways to give ground truth, come as
    multipart parts)."""
    return {
        "allOf": [{"$ref": ref}],
        "required": ["manifest_url"],
        "properties": {"manifest_url": {"type": "string"}},
    }


SPEC = JobSpec(
    name="evaluate",
    summary="evaluate: precision, recall, mAP of a model against annotated pages",
    params=EvaluateParams,
    input=EvaluateInput,
    run=run,
    item=EvaluatePage,
    docs="docs/models.md",
    task_inputs=task_inputs,
    check=check,
    input_required=False,
    uploads=True,
    input_schema=input_schema,
    model_fields={"model": "detect"},
    limits=JobLimits(timeout_default_s=1800, timeout_max_s=7200, max_images=2000),
)
