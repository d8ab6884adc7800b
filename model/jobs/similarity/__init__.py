"""Find the same (or related) illustrations or pages across documents.

Every pair of documents is compared — each with itself too, skipping an item against itself —
and each pair gets its top-k most similar items, with scores, canvas ids and boxes in canvas
coordinates. `level: "region"` runs the detector and compares the detected illustrations;
`"page"` compares whole pages: a global descriptor shortlist, SIFT + RANSAC verification, a
photometric check. The worker side, in this package:

- `embedders`: pluggable global feature extractors (model cards with task "embed").
- `features`: what is kept of a page or region: global descriptor, SIFT keypoints, a small
  grey thumbnail for the photometric check.
- `local`: SIFT matching and RANSAC verification.
- `compare`: shortlist by global descriptor, verify, score, top-k per document pair.
- `cache`: page features cached in Redis by content hash + model sha256.
- `plan`, `job`: the task's items and its run.

This module is imported by the HTTP process (request validation): it must stay torch-free, so
the worker side is imported inside run().
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.jobs.contract import Document, InputRejected, TaskInput
from model.jobs.fields import Integer
from model.jobs.items import DetectPage
from model.jobs.spec import JobSpec
from model.settings import JobLimits, Settings
from model.urls import HTTP_URL_PATTERN, check_http_url

if TYPE_CHECKING:
    from model.jobs.context import JobContext

DOCUMENT_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
# A hard ceiling for validation; the service's own limit is `similarity.max_documents`.
MAX_DOCUMENTS = 50


class SimilarityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    level: Literal["region", "page"] = Field(
        "region", description="region: compare detected illustrations; page: whole pages"
    )
    top_k: Integer = Field(10, ge=1, le=200, description="Most similar item pairs kept per pair")
    model: str | None = Field(
        None,
        description="Feature extractor (GET /models, task 'embed'); the configured one if omitted",
    )
    detector: str | None = Field(
        None, description="Detection model for level 'region' (GET /models, task 'detect')"
    )
    confidence: float = Field(0.25, ge=0.0, le=1.0, description="Detector threshold (region)")
    iou: float = Field(0.45, ge=0.0, le=1.0, description="Detector NMS IoU threshold (region)")
    max_side: Integer = Field(
        1024, ge=256, le=4096, description="Longest side (px) at which pages are analysed"
    )
    candidates: Integer = Field(
        20,
        ge=1,
        le=1000,
        description="Items shortlisted per item by the global descriptor before verification",
    )
    min_score: float = Field(
        0.0, ge=0.0, le=1.0, description="Leave out item pairs scoring below this"
    )


class SimilarityInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    documents: dict[str, str] = Field(
        description="Documents to compare: a short name of your choice -> http(s) URL of a IIIF "
        "manifest or collection (at least 2)",
        json_schema_extra={
            "minProperties": 2,
            "maxProperties": MAX_DOCUMENTS,
            "propertyNames": {"pattern": DOCUMENT_KEY.pattern},
            "additionalProperties": {"type": "string", "pattern": HTTP_URL_PATTERN},
        },
    )

    @field_validator("documents")
    @classmethod
    def _documents(cls, documents: dict[str, str]) -> dict[str, str]:
        if len(documents) < 2:
            raise ValueError("give at least 2 documents to compare")
        if len(documents) > MAX_DOCUMENTS:
            raise ValueError(f"at most {MAX_DOCUMENTS} documents")
        for key, url in documents.items():
            if not DOCUMENT_KEY.fullmatch(key):
                raise ValueError(
                    f"document name {key[:80]!r}: 1-64 letters, digits, '_', '.', ':' or '-'"
                )
            # Only the shape is checked here; the worker's fetcher decides what it may reach.
            check_http_url(url, f"document {key!r}")
        return documents


def task_inputs(request_input: SimilarityInput) -> list[TaskInput]:
    return [Document(name=name, url=url) for name, url in request_input.documents.items()]


def check(request_input: SimilarityInput, _inputs: list[TaskInput], settings: Settings) -> None:
    most = settings.similarity.max_documents
    if len(request_input.documents) > most:
        raise InputRejected("too_many_documents", f"at most {most} documents per similarity task")


class SimilarityPage(DetectPage):
    """A page of a document: read like detect's (its illustrations when `level` is region)."""

    document: str = Field(description="The document (input key) the page belongs to")
    compared: int | None = Field(None, description="Items of the page that were compared")


class PairSide(BaseModel):
    """One item of a match: a page, or one of its illustrations."""

    model_config = ConfigDict(extra="forbid")

    document: str
    index: int = Field(description="The page's result item")
    canvas_id: str | None = None
    label: str | None = None
    manifest: int | None = None
    region: int | None = Field(None, description="Its illustration (detections), null: the page")
    xywh: list[int] = Field(description="The item's box, in canvas (else image) coordinates")
    match_xywh: list[int] | None = Field(None, description="Where it matches the other side")


class PairMatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score: float = Field(description="0-1: verified keypoints and aligned correlation")
    inliers: int
    matches: int
    correlation: float
    cosine: float
    scale: float
    rotation: float = Field(description="Degrees")
    a: PairSide
    b: PairSide


class DocumentPair(BaseModel):
    """The result's `pairs`: one per pair of documents, its top-k item pairs, best first."""

    model_config = ConfigDict(extra="forbid")

    documents: list[str]
    items: list[int] = Field(description="How many items each document had")
    verified: int
    seconds: float
    matches: list[PairMatch]


class Comparison(BaseModel):
    model_config = ConfigDict(extra="forbid")

    done: int = Field(description="Pairs of documents compared")
    total: int


def run(ctx: JobContext) -> None:
    from model.jobs.similarity.job import run_similarity

    run_similarity(ctx, SimilarityParams(**ctx.spec.params))


SPEC = JobSpec(
    name="similarity",
    summary="similarity: find the same illustrations or pages across documents",
    params=SimilarityParams,
    input=SimilarityInput,
    run=run,
    item=SimilarityPage,
    docs="docs/api.md#similarity-the-same-illustrations-across-documents",
    task_inputs=task_inputs,
    check=check,
    input_required=True,
    model_fields={"model": "embed", "detector": "detect"},
    limits=JobLimits(timeout_default_s=1800, timeout_max_s=7200, max_images=500),
)
