"""Fast layer: the labels job (model/jobs/labels/), added as a package and one registry line
(docs/adding-a-job.md). Its request validation, its run through the real runner, and a task
submitted, read and refused through the HTTP app — a bare redis-server, no worker, no model."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from pydantic import BaseModel, ValidationError

from model.jobs.contract import SourceTask, TaskSpec, WorkerResources
from model.jobs.items import DetectPage
from model.jobs.labels import SPEC, LabelsInput
from model.jobs.registry import JOBS
from model.jobs.spec import JobSpec
from model.lifecycle.runner import run_task
from model.settings import Settings
from model.tasks.states import State
from model.tasks.store import TaskStore
from model.uploads import UploadStore

# Two pages a detect task found: label and confidence of each box.
BOXES = [[("initial", 0.9), ("initial", 0.3), ("woodcut", 0.8)], [("woodcut", 0.8)]]


def _detect(ctx) -> None:
    """A detect task's result, as the detect job stores it, without a model."""
    for index, found in enumerate(BOXES):
        detections = [{"label": label, "confidence": c, "xywh": [0, 0, 1, 1]} for label, c in found]
        page = {"index": index, "source": f"p{index}", "status": "ok", "detections": detections}
        ctx.emit(DetectPage.model_validate(page))


FAKE_DETECT = JobSpec(
    name="detect", summary="", params=BaseModel, input=BaseModel, run=_detect, item=DetectPage
)
JOBS_HERE = {"detect": FAKE_DETECT, "labels": JOBS["labels"]}


def _resources(store: TaskStore) -> WorkerResources:
    port = store.redis.connection_pool.connection_kwargs["port"]
    uploads = UploadStore(redis.Redis(port=port), Path("/nonexistent"))
    return WorkerResources(
        settings=Settings(), redis=store.redis, store=store, fetcher=None, uploads=uploads
    )


def _finished_detect(store: TaskStore, owner: str) -> str:
    task_id = store.create(owner, "detect", TaskSpec().model_dump(), len(BOXES), 60).id
    assert run_task(task_id, store, _resources(store), JOBS_HERE) == State.SUCCEEDED
    return task_id


def test_labels_is_registered_and_validated_like_every_job() -> None:
    from model.api.schemas import REQUEST_MODELS

    assert JOBS["labels"] is SPEC
    request = REQUEST_MODELS["labels"]
    body = {"type": "labels", "input": {"task_id": "0" * 32}, "params": {"min_confidence": 0.5}}
    parsed = request.model_validate(body)
    assert SPEC.task_inputs(parsed.input) == [SourceTask(task_id="0" * 32)]
    for wrong in ({"min_confidence": 2}, {"confidence": 0.5}, {"min_confidence": "0.5"}):
        with pytest.raises(ValidationError):
            request.model_validate({**body, "params": wrong})
    with pytest.raises(ValidationError):
        request.model_validate({"type": "labels", "input": {"task_id": "../x"}})
    with pytest.raises(ValidationError):
        request.model_validate({"type": "labels"})  # its input is required


def test_labels_runs_through_the_runner(store: TaskStore) -> None:
    detect_id = _finished_detect(store, "alice")

    def labels_task(owner: str) -> str:
        spec = TaskSpec(
            params={"min_confidence": 0.5},
            inputs=SPEC.task_inputs(LabelsInput(task_id=detect_id)),
        )
        return store.create(owner, "labels", spec.model_dump(), 0, 60).id

    mine = labels_task("alice")
    assert run_task(mine, store, _resources(store), JOBS_HERE) == State.SUCCEEDED
    record = store.get(mine)
    assert (record.done, record.total) == (2, 2)
    items = sorted(store.items(mine), key=lambda item: item["index"])
    assert [item["labels"] for item in items] == [{"initial": 1, "woodcut": 1}, {"woodcut": 1}]
    assert record.summary == {"labels": {"initial": 1, "woodcut": 2}}
    # Another key's detect task is no more visible to the job than through the API.
    theirs = labels_task("mallory")
    assert run_task(theirs, store, _resources(store), JOBS_HERE) == State.FAILED
    assert store.get(theirs).error_code == "source_not_found"


def test_a_labels_task_is_submitted_read_and_refused_through_the_api(app_client, store) -> None:
    detect_id = _finished_detect(store, "fast")  # app_client's key
    body = {"type": "labels", "input": {"task_id": detect_id}, "params": {"min_confidence": 0.5}}
    resp = app_client.post("/task", json=body)
    assert resp.status_code == 202, resp.json
    task_id = resp.json["task_id"]
    assert run_task(task_id, store, _resources(store), JOBS_HERE) == State.SUCCEEDED
    result = app_client.get(f"/result/{task_id}").json
    assert result["state"] == "SUCCEEDED"
    assert [item["labels"] for item in result["items"]] == [
        {"initial": 1, "woodcut": 1},
        {"woodcut": 1},
    ]
    assert result["labels"] == {"initial": 1, "woodcut": 2}
    # Refused at submit: an unknown task, a task that is not a detect task, bad params.
    unknown = app_client.post("/task", json={**body, "input": {"task_id": "0" * 32}})
    assert (unknown.status_code, unknown.json["error"]["code"]) == (404, "source_not_found")
    labels_as_source = app_client.post("/task", json={**body, "input": {"task_id": task_id}})
    assert labels_as_source.status_code == 422
    assert labels_as_source.json["error"]["code"] == "source_unusable"
    too_sure = app_client.post("/task", json={**body, "params": {"min_confidence": 1.5}})
    assert too_sure.status_code == 422
    # Listed with its own page, and its default limits (flask_config.yaml need not list it).
    (listed,) = [job for job in app_client.get("/jobs").json["jobs"] if job["name"] == "labels"]
    assert listed["docs"] == "model/jobs/labels/README.md"
    assert listed["limits"] == {"timeout_default_s": 60, "timeout_max_s": 600, "max_images": 0}
