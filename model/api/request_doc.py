"""The POST /task request body as the OpenAPI document describes it: JSON (one schema per job
type) or multipart (detect with uploads). flask-openapi3 validates JSON bodies only and we
parse both ourselves, so the body is documented by hand here — as strictly as the API checks
it, so that what the document calls valid is accepted and what it calls invalid is refused
(schemathesis checks both ways)."""

from __future__ import annotations

from typing import Any

from flask_openapi3 import OpenAPI
from flask_openapi3.models import RequestBody
from pydantic import BaseModel

from model.api.schemas import MIN_TIMEOUT_S, REQUEST_MODELS, Webhook
from model.inference.registry import discover
from model.jobs.registry import JOBS
from model.jobs.spec import JobSpec
from model.settings import Settings

REF = "#/components/schemas/{model}"
# The job types multipart submits are for (their JobSpec takes uploads: detect, evaluate,
# vectorize); without a `type` part, the first (detect), which this document describes.
UPLOAD_JOBS = [name for name, job in JOBS.items() if job.uploads]
UPLOAD_JOB = UPLOAD_JOBS[0]
# Formats accepted for uploaded images / manifests (the part's declared type is not checked:
# the bytes are sniffed; this tells generators and readers what to send).
IMAGE_TYPES = "image/jpeg, image/png, image/tiff, image/webp, image/gif, image/bmp"
MANIFEST_TYPE = "application/ld+json"


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    schema.pop("$defs", None)
    return schema


def _input_schema(job: JobSpec) -> dict[str, Any]:
    ref = REF.format(model=job.input.__name__)
    return job.input_schema(ref) if job.input_schema else {"$ref": ref}


def _bound_timeout(schema: dict[str, Any], most: float) -> None:
    """The job type's longest timeout (a setting, so not in the static model)."""
    for branch in schema["properties"]["timeout"].get("anyOf", []):
        if branch.get("type") == "number":
            branch["maximum"] = most


def _json_schemas(settings: Settings) -> list[dict[str, Any]]:
    schemas = []
    for job_type, model in REQUEST_MODELS.items():
        job = JOBS[job_type]
        schema = _schema(model)
        _bound_timeout(schema, job.limits_in(settings).timeout_max_s)
        if job.input_schema:  # stricter than the model: then `input` is needed too
            schema["required"] = [*dict.fromkeys([*schema.get("required", []), "input"])]
            schema["properties"]["input"] = _input_schema(job)
        schemas.append(schema)
    return schemas


def _files(description: str, most: int) -> dict[str, Any]:
    # One file per part, the part repeated for more (curl -F images=@a.jpg -F images=@b.jpg):
    # described as one binary, which is what each part is (and how generators send files).
    return {
        "type": "string",
        "format": "binary",
        "description": f"{description}; repeat the part for more (at most {most})",
    }


def _multipart_schema(settings: Settings) -> dict[str, Any]:
    """The multipart form of the default upload job (detect). The other job types that take
    uploads (vectorize) take the same form with their `type` and params; they are not described
    as alternatives here because schemathesis cannot generate multipart bodies under a oneOf."""
    job = JOBS[UPLOAD_JOB]
    limits = job.limits_in(settings)
    others = [name for name in UPLOAD_JOBS if name != UPLOAD_JOB]
    return {
        "type": "object",
        "properties": {
            "type": {
                "type": "string",
                "const": job.name,
                "default": job.name,
                "description": f"multipart is for {job.name} with uploads (also "
                f"{', '.join(others) or 'nothing else'}: the same form with its own type and "
                "params); other jobs are JSON",
            },
            "params": {"$ref": REF.format(model=job.params.__name__)},
            "input": {"$ref": REF.format(model=job.input.__name__)},
            "webhook": {"$ref": REF.format(model=Webhook.__name__)},
            "timeout": {
                "type": "number",
                "minimum": MIN_TIMEOUT_S,
                "maximum": limits.timeout_max_s,
            },
            "images": _files("page images", limits.max_images),
            "manifest": _files(
                "IIIF manifest or collection JSON file(s)", settings.iiif.max_manifests
            ),
        },
        # Something to work on: images, a manifest, or URLs in `input`.
        "anyOf": [
            {"required": ["images"]},
            {"required": ["manifest"]},
            {"required": ["input"], "properties": {"input": _input_schema(job)}},
        ],
    }


def document_task_body(app: OpenAPI, settings: Settings) -> None:
    """POST /task's body in this app's document, from the app's settings (limits are settings;
    the blueprint is made at import, before any settings are known, and shared by every app)."""
    path = app.paths["/task"].model_copy(deep=True)
    assert path.post is not None
    path.post.requestBody = RequestBody.model_validate(task_request_body(settings))
    app.paths["/task"] = path


def task_request_body(settings: Settings) -> dict[str, Any]:
    """The `requestBody` of POST /task."""
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": _json_schemas(settings)}},
            "multipart/form-data": {
                "schema": _multipart_schema(settings),
                # Object parts are JSON (OpenAPI's default for them, said explicitly).
                "encoding": {
                    "params": {"contentType": "application/json"},
                    "input": {"contentType": "application/json"},
                    "webhook": {"contentType": "application/json"},
                    "images": {"contentType": IMAGE_TYPES},
                    "manifest": {"contentType": MANIFEST_TYPE},
                },
            },
        },
    }


def request_schema_components(settings: Settings) -> dict[str, Any]:
    """Schemas the hand-written request body refers to; added to the document's components.
    Model names are listed as found when the app starts (GET /models has the live list)."""
    components: dict[str, Any] = {}
    for model in REQUEST_MODELS.values():
        components.update(model.model_json_schema(ref_template=REF).get("$defs", {}))
    # The shortest progress interval is a setting, so not in the static model.
    interval = components[Webhook.__name__]["properties"]["progress_interval_s"]
    interval["minimum"] = settings.webhooks.min_progress_interval_s
    models = discover(settings.model_dirs)
    for job in JOBS.values():
        for field, task in job.model_fields.items():
            names = sorted(name for name, info in models.items() if info.task == task)
            for branch in components[job.params.__name__]["properties"][field].get("anyOf", []):
                if branch.get("type") == "string":
                    branch["enum"] = names
    return components
