"""Fast layer: the seams every job type goes through — the registry, the typed task contract, the
runner with a fake job, the layers each process imports, defaults in one place. Seconds, with a
bare redis-server at most."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from model.jobs import JobFailed
from model.jobs.contract import (
    Document,
    ImageUpload,
    ImageUrl,
    ManifestUpload,
    ManifestUrl,
    SourceTask,
    TaskSpec,
    WorkerResources,
)
from model.jobs.crops import CropsParams, crops_of
from model.jobs.items import DetectPage, ResultItem
from model.jobs.loading import PageLoader, Prepared, page_batches
from model.jobs.registry import JOBS
from model.jobs.spec import JobSpec
from model.jobs.units import WorkUnit
from model.lifecycle.ending import end_after_failure
from model.lifecycle.runner import run_task
from model.settings import CONFIG_FILE, JobLimits, Settings
from model.tasks.states import TRANSITIONS, State, sources_of
from model.tasks.store import TaskStore
from model.uploads import UploadStore

PROJECT_ROOT = Path(__file__).resolve().parents[2]


# --- the registry -------------------------------------------------------------------------------


def _declared_job_modules() -> dict[str, object]:
    """Every module under model/jobs/ that declares a job type (`SPEC = JobSpec(`), by name."""
    jobs = PROJECT_ROOT / "model" / "jobs"
    declared = {}
    for path in sorted([*jobs.glob("*.py"), *jobs.glob("*/__init__.py")]):
        if re.search(r"^SPEC = JobSpec\(", path.read_text(), re.M):
            parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            declared[name] = importlib.import_module(name)
    return declared


def test_every_job_type_is_declared_once_and_derived_everywhere() -> None:
    """The registry line is the declaration: no set of names to keep by hand here. What cannot
    go unnoticed: a job module left out of the registry (or dropped from it), and a type the
    README still names that is gone (test_the_readme_names_only_registered_job_types)."""
    from model.api.schemas import REQUEST_MODELS

    declared = _declared_job_modules()
    assert {m.SPEC.name: m.SPEC for m in declared.values()} == JOBS
    assert {f"model.jobs.{name}" for name in JOBS} == set(declared)  # its package, its name
    assert set(REQUEST_MODELS) == set(JOBS)
    for name, spec in JOBS.items():
        model = REQUEST_MODELS[name]
        assert model.model_fields["type"].annotation.__args__ == (name,)
        assert model.model_fields["params"].annotation is spec.params
        assert model.model_fields["input"].annotation is spec.input


@pytest.mark.parametrize("name", sorted(JOBS))
def test_each_job_type_is_complete_in_its_package(name: str) -> None:
    """What a package and its registry line must hold for the API, the worker and the docs to
    derive everything else (docs/adding-a-job.md). The HTTP process importing it without torch
    is test_the_http_process_imports_no_torch_pil_requests_or_job_work."""
    from server.tests.test_fast_docs import _anchors

    spec = JOBS[name]
    title = name.title()
    # The OpenAPI document names schemas by class: `Params` of two jobs would collide.
    assert (spec.params.__name__, spec.input.__name__) == (f"{title}Params", f"{title}Input")
    assert issubclass(spec.item, ResultItem)
    assert spec.summary.startswith(f"{name}: ")
    assert callable(spec.run) and spec.run.__module__.startswith(f"model.jobs.{name}")
    assert spec.limits.timeout_default_s <= spec.limits.timeout_max_s
    page, _, anchor = spec.docs.partition("#")
    assert page.endswith(".md") and (PROJECT_ROOT / page).is_file(), spec.docs
    assert not anchor or anchor in _anchors(PROJECT_ROOT / page), spec.docs


def test_the_readme_names_only_registered_job_types() -> None:
    """Its table of job types need not list a new one (GET /jobs does), but names no gone one."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    named = re.findall(r"^\| `(\w+)` \|", readme, re.M)
    assert named and set(named) <= set(JOBS), set(named) - set(JOBS)


def test_the_openapi_document_lists_every_job_type(app_client) -> None:
    doc = app_client.get("/openapi/openapi.json").json
    body = doc["paths"]["/task"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    types = {branch["properties"]["type"]["const"] for branch in body["oneOf"]}
    assert types == set(JOBS)


def test_the_openapi_document_describes_every_job_types_items(app_client) -> None:
    schemas = app_client.get("/openapi/openapi.json").json["components"]["schemas"]
    branches = schemas["TaskResult"]["properties"]["items"]["items"]["anyOf"]
    described = {branch["$ref"].rsplit("/", 1)[1] for branch in branches}
    assert described == {spec.item.__name__ for spec in JOBS.values()}
    crops = schemas[JOBS["crops"].item.__name__]["properties"]
    assert {"crops", "index", "status"} <= set(crops)
    assert schemas["Crop"]["properties"]["region_url"]
    pairs = schemas["TaskResult"]["properties"]["pairs"]
    assert pairs["items"]["$ref"].endswith("/DocumentPair")


def test_post_task_documents_the_codes_a_refused_source_task_gets(app_client, store) -> None:
    """A source task refused at submit is a 404 or a 422 (no 409: nothing on POST /task answers
    one), and the OpenAPI document promises just those (schemathesis holds responses to it)."""
    responses = app_client.get("/openapi/openapi.json").json["paths"]["/task"]["post"]["responses"]
    running = store.create("fast", "detect", TaskSpec().model_dump(), 2, 60).id
    for task_id, status, code in (
        (running, 422, "source_unusable"),
        ("0" * 32, 404, "source_not_found"),
    ):
        resp = app_client.post("/task", json={"type": "vectorize", "input": {"task_id": task_id}})
        assert (resp.status_code, resp.json["error"]["code"]) == (status, code)
        assert str(status) in responses
    assert {"202", "403"} <= set(responses) and "409" not in responses


def test_get_jobs_lists_every_registered_type_with_its_docs_and_limits(make_app) -> None:
    client = make_app(jobs={"crops": {"timeout_max_s": 300}})
    assert client.get("/jobs").status_code == 401
    key = client.keys.create("fast")
    listed = {
        job["name"]: job for job in client.get("/jobs", headers={"X-API-Key": key}).json["jobs"]
    }
    assert list(listed) == list(JOBS)
    assert listed["crops"]["limits"] == {
        "timeout_default_s": 120,
        "timeout_max_s": 300,
        "max_images": 0,
    }
    assert listed["vectorize"]["source_task_types"] == ["detect"] and listed["detect"]["uploads"]
    schemas = client.get("/openapi/openapi.json").json["components"]["schemas"]
    for name, job in listed.items():
        spec = JOBS[name]
        assert (job["summary"], job["docs"]) == (spec.summary, spec.docs)
        assert job["limits"] == spec.limits_in(client.app_settings).model_dump()
        for ref, model in zip(
            (job["params_schema"], job["input_schema"], job["item_schema"]),
            (spec.params, spec.input, spec.item),
            strict=True,
        ):
            assert ref == f"/openapi/openapi.json#/components/schemas/{model.__name__}"
            assert model.__name__ in schemas, ref


def test_a_result_shows_another_job_types_fields_only_when_set() -> None:
    from model.api.schemas import TaskResult

    plain = json.loads(
        TaskResult(items=[{"index": 0, "source": "a", "status": "ok"}]).model_dump_json()
    )
    assert "pairs" not in plain and "comparison" not in plain
    assert plain["items"] == [{"index": 0, "source": "a", "status": "ok"}]  # as stored
    similar = TaskResult(items=[], pairs=[], comparison={"done": 0, "total": 1})
    assert json.loads(similar.model_dump_json())["pairs"] == []


# --- the typed contract -------------------------------------------------------------------------


def test_task_spec_round_trips_through_json() -> None:
    spec = TaskSpec(
        params={"confidence": 0.5},
        inputs=[
            ImageUrl(url="https://a/1.jpg"),
            ImageUpload(key="sc:upload:t:00000", filename="p.png"),
            ManifestUrl(url="https://a/m.json"),
            ManifestUpload(key="sc:upload:t:00001", filename="m.json"),
            ImageUpload(path="/x/00001.png", filename="q.png"),  # stored by an older release
            Document(name="paris", url="https://b/m.json"),
            SourceTask(task_id="0" * 32),
        ],
    )
    again = TaskSpec.model_validate(json.loads(json.dumps(spec.model_dump())))
    assert again == spec
    assert again.of_kind(ImageUrl, ImageUpload) == [*spec.inputs[:2], spec.inputs[4]]


def test_specs_stored_before_the_contract_still_run() -> None:
    """A task queued across an upgrade keeps its inputs."""
    legacy = {
        "params": {},
        "inputs": [
            {"url": "https://a/1.jpg"},
            {"upload": "/x/00001.png", "filename": "p.png"},
            {"manifest_url": "https://a/m.json"},
            {"manifest_upload": "/x/00002.json", "filename": "m.json"},
            {"document": "paris", "manifest_url": "https://b/m.json"},
        ],
    }
    kinds = [type(e) for e in TaskSpec.model_validate(legacy).inputs]
    assert kinds == [ImageUrl, ImageUpload, ManifestUrl, ManifestUpload, Document]
    typed_with_paths = {
        "inputs": [
            {"kind": "image_upload", "path": "/x/00001.png", "filename": "p.png"},
            {"kind": "manifest_upload", "path": "/x/00002.json"},
        ]
    }
    upload, manifest = TaskSpec.model_validate(typed_with_paths).inputs
    assert (upload.path, upload.key, manifest.path) == ("/x/00001.png", None, "/x/00002.json")


def test_an_upload_is_in_redis_or_on_a_legacy_path_never_both() -> None:
    with pytest.raises(ValueError):
        ImageUpload(filename="p.png")
    with pytest.raises(ValueError):
        ImageUpload(key="sc:upload:t:00000", path="/x/00000.png")


# --- the runner with a fake job -----------------------------------------------------------------


class _Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _fake_jobs(run) -> dict[str, JobSpec]:
    return {
        "fake": JobSpec(
            name="fake", summary="fake", params=_Empty, input=_Empty, run=run, item=ResultItem
        )
    }


def _resources(store: TaskStore) -> WorkerResources:
    return WorkerResources(
        settings=Settings(), redis=store.redis, store=store, fetcher=None, uploads=_uploads(store)
    )


def _uploads(store: TaskStore) -> UploadStore:
    port = store.redis.connection_pool.connection_kwargs["port"]
    return UploadStore(redis.Redis(port=port), Path("/nonexistent"))


def _submit(store: TaskStore) -> str:
    return store.create("alice", "fake", TaskSpec().model_dump(), 2, 60).id


def test_runner_records_items_and_success(store: TaskStore) -> None:
    def run(ctx) -> None:
        ctx.set_total(2)
        ctx.emit(ResultItem(index=0, source="a", status="ok"))
        ctx.emit(ResultItem(index=1, source="b", status="failed"), failed=True)

    task_id = _submit(store)
    assert run_task(task_id, store, _resources(store), _fake_jobs(run)) == State.SUCCEEDED
    record = store.get(task_id)
    assert (record.state, record.done, record.failed, record.total) == (State.SUCCEEDED, 1, 1, 2)


def test_an_item_its_model_refuses_is_never_stored() -> None:
    with pytest.raises(ValidationError):  # a key no client was told about
        DetectPage.model_validate({"index": 0, "source": "a", "status": "ok", "boxes": []})
    page = DetectPage.model_validate({"index": 0, "source": "a", "status": "ok"})
    # What was set, and `error` always (clients read it on every item: null when ok).
    assert page.stored() == {"index": 0, "source": "a", "status": "ok", "error": None}


def _finished_detect(store: TaskStore, owner: str = "alice") -> str:
    task_id = store.create(owner, "detect", TaskSpec().model_dump(), 2, 60).id
    token = store.mark_running(task_id, 1)
    store.add_item(task_id, {"index": 0, "source": "a", "status": "ok"}, False, token)
    store.keep_manifest(task_id, 0, "{}", 60)
    assert store.finish(task_id, State.SUCCEEDED, holder=token)
    return task_id


def test_a_job_reads_a_finished_task_of_its_own_key_only(store) -> None:
    mine, theirs = _finished_detect(store), _finished_detect(store, owner="bob")
    running = store.create("alice", "detect", TaskSpec().model_dump(), 2, 60).id
    seen: dict[str, object] = {}

    def run(ctx) -> None:
        with pytest.raises(ValueError):  # not read with source(): not readable
            ctx.kept_manifest(mine, 0)
        source = ctx.source(mine, ("detect",))
        seen["items"], seen["manifest"] = source.items, ctx.kept_manifest(mine, 0)
        for task_id, types, code in (
            (theirs, ("detect",), "source_not_found"),
            (running, ("detect",), "source_unusable"),
            (mine, ("similarity",), "source_unusable"),
        ):
            with pytest.raises(JobFailed) as caught:
                ctx.source(task_id, types)
            seen[code] = caught.value.code
        ctx.keep_manifest(0, "{}")

    task_id = _submit(store)
    assert run_task(task_id, store, _resources(store), _fake_jobs(run)) == State.SUCCEEDED
    assert seen["items"] == [{"index": 0, "source": "a", "status": "ok"}]
    assert seen["manifest"] == "{}" and store.kept_manifest(task_id, 0) == "{}"
    assert seen["source_not_found"] == "source_not_found"
    assert seen["source_unusable"] == "source_unusable"


def test_a_superseded_attempt_keeps_no_document(store) -> None:
    def run(ctx) -> None:
        store.redis.delete(f"sc:task:{ctx.task_id}:lease")  # frozen past the grace: another
        store.requeue(ctx.task_id, ctx.attempt.token, None)  # worker requeues it meanwhile
        ctx.keep_manifest(0, "{}")

    task_id = _submit(store)
    assert run_task(task_id, store, _resources(store), _fake_jobs(run)) is None
    assert store.kept_manifest(task_id, 0) is None


@pytest.mark.parametrize(
    ("raised", "state", "code"),
    [
        (JobFailed("bad_input", "no"), State.FAILED, "bad_input"),
        (KeyError("x"), State.FAILED, "internal_error"),
    ],
)
def test_runner_ends_a_failing_job(store, raised, state, code) -> None:
    def run(ctx) -> None:
        raise raised

    task_id = _submit(store)
    assert run_task(task_id, store, _resources(store), _fake_jobs(run)) == state
    assert store.get(task_id).error_code == code


def test_runner_resumes_after_the_items_already_stored(store) -> None:
    seen = []

    def run(ctx) -> None:
        done = ctx.finished_indices()
        for index in range(3):
            if index not in done:
                seen.append(index)
                ctx.emit(ResultItem(index=index, source=str(index), status="ok"))

    task_id = _submit(store)
    store.mark_running(task_id, 1)  # a first attempt that died after one item
    store.add_item(task_id, {"index": 0, "source": "0", "status": "ok"}, failed=False)
    store.redis.delete(f"sc:task:{task_id}:lease")  # ...and whose lease lapsed
    run_task(task_id, store, _resources(store), _fake_jobs(run))
    assert seen == [1, 2] and store.get(task_id).done == 3


def test_runner_leaves_a_task_to_its_requeue_when_redis_is_out_of_reach(store) -> None:
    """Redis away longer than the clients' patience is not the task's fault: it is neither
    failed by the runner nor by Celery's failure signal; its lease lapses and it is requeued."""

    def run(ctx) -> None:
        ctx.emit(ResultItem(index=0, source="a", status="ok"))
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

    task_id = _submit(store)
    assert run_task(task_id, store, _resources(store), _fake_jobs(run)) is None
    error = redis.TimeoutError("Timeout reading from socket")
    assert end_after_failure(store, _uploads(store), task_id, error) is None
    record = store.get(task_id)
    assert (record.state, record.done, record.error_code) == (State.RUNNING, 1, None)


def test_a_page_that_cannot_reach_redis_stops_the_attempt_instead_of_failing(store) -> None:
    """A page's cache lookup or upload read that finds Redis gone is raised by page_batches (the
    runner then leaves the task to its requeue), not recorded as a failed page."""

    class RedisGone:
        failed = PageLoader.failed

        def __call__(self, unit: WorkUnit) -> Prepared:
            raise redis.ConnectionError("Connection refused")

    class Scope:
        def cancel(self) -> None:
            pass

    units = [WorkUnit(index=i, source=f"https://example.org/{i}.jpg") for i in range(3)]
    with (
        page_batches(units, RedisGone(), Settings(), Scope(), lambda: None) as batches,
        pytest.raises(redis.ConnectionError),
    ):
        next(batches)
    other = PageLoader.failed(RedisGone(), units[0], ValueError("truncated"))
    assert other.fault is None and other.error == ("load_error", "ValueError: truncated")


def test_a_queued_task_with_a_cancel_never_runs(store) -> None:
    from model.lifecycle.ending import cancel_task

    task_id = _submit(store)
    assert cancel_task(store, _uploads(store), task_id) == State.QUEUED
    ran = []
    assert run_task(task_id, store, _resources(store), _fake_jobs(ran.append)) is None
    assert not ran and store.get(task_id).state == State.CANCELLED


# --- the transition table -----------------------------------------------------------------------


def test_terminal_states_go_nowhere_and_success_needs_a_run() -> None:
    assert all(not state.terminal for state in TRANSITIONS)
    assert sources_of(State.SUCCEEDED) == [State.RUNNING]
    assert set(sources_of(State.CANCELLED)) == {State.QUEUED, State.RUNNING}


def test_a_queued_task_cannot_succeed(store) -> None:
    task_id = _submit(store)
    assert not store.finish(task_id, State.SUCCEEDED)
    assert store.get(task_id).state == State.QUEUED


# --- crops: the job added through the registry --------------------------------------------------


SERVICE = "https://img.example.org/iiif/3/page3"


def _detected_item(method: str = "computed", service: str | None = SERVICE) -> DetectPage:
    return DetectPage.model_validate(
        {
            "index": 3,
            "source": "https://iiif.example.org/c3",
            "canvas_id": "https://iiif.example.org/c3",
            "status": "ok",
            "image_url": f"{SERVICE}/full/832,/0/default.jpg",
            "request": {
                "method": method,
                "choice": "scaled",
                "full_width": 4000,
                "full_height": 6000,
                "service_id": service,
            },
            "canvas_width": 2000,
            "canvas_height": 3000,
            "detections": [
                {"xywh": [100, 200, 300, 400], "confidence": 0.9, "label": "illustration"},
                {"xywh": [0, 0, 10, 10], "confidence": 0.1, "label": "illustration"},
            ],
        }
    )


def test_crops_are_region_urls_in_full_image_pixels() -> None:
    item = crops_of(_detected_item(), CropsParams(min_confidence=0.5)).stored()
    assert item["status"] == "ok" and len(item["crops"]) == 1
    crop = item["crops"][0]
    assert crop["xywh"] == [200, 400, 600, 800]  # canvas 2000 wide, image 4000: x2
    assert crop["region_url"] == (
        "https://img.example.org/iiif/3/page3/200,400,600,800/pct:100/0/default.jpg"
    )


def test_crops_pad_within_the_image_and_skip_serviceless_pages() -> None:
    padded = crops_of(_detected_item(), CropsParams(padding=0.5)).stored()["crops"][1]
    assert padded["xywh"][:2] == [0, 0]  # clamped at the edge
    plain = crops_of(_detected_item(method="image", service=None), CropsParams()).stored()
    assert plain["crops"][0]["region_url"] is None
    assert plain["crops"][0]["xywh"] == [200, 400, 600, 800]


def test_crops_ask_the_service_the_page_names_not_its_url_taken_apart() -> None:
    # The service the page names, even one the image URL was not built on (a CDN's copy).
    service = "https://img.example.org/cantaloupe/iiif/2/a%2Fb%2Fpage3.jp2"
    crop = crops_of(_detected_item(service=service), CropsParams()).crops[0]
    assert crop.region_url == f"{service}/200,400,600,800/pct:100/0/default.jpg"
    # The image URL alone (no service stored) gives no region URL: nothing is guessed from it.
    assert crops_of(_detected_item(service=None), CropsParams()).crops[0].region_url is None


def test_a_crops_item_keeps_the_fields_clients_read() -> None:
    item = crops_of(_detected_item(), CropsParams()).stored()
    assert set(item) == {
        "index", "source", "canvas_id", "image_url", "status", "detections", "crops", "error"
    }  # fmt: skip
    failed = DetectPage(index=1, source="s", status="failed", error={"code": "x", "message": ""})
    assert crops_of(failed, CropsParams()).stored() == {
        "index": 1,
        "source": "s",
        "status": "failed",
        "crops": [],
        "error": {"code": "x", "message": ""},
    }


# --- layers: what each process imports ----------------------------------------------------------


def _modules_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_http_process_imports_no_torch_pil_requests_or_job_work(tmp_path: Path) -> None:
    # What gunicorn imports (model.wsgi: the app, made from the settings), and the views.
    loaded = _modules_after(
        "import model.wsgi, model.api.tasks",
        env={**os.environ, "SCRIPTORIUM_DATA_DIR": str(tmp_path)},
    )
    heavy = {"torch", "PIL", "requests", "cv2", "numpy", "ultralytics", "onnxruntime"}
    worker_code = {
        "model.jobs.detect_run",
        "model.jobs.loading",
        "model.jobs.pages",
        "model.pipeline.prefetch",
        "model.sources.fetch",
        "model.jobs.similarity.job",
        "model.inference.detector",
    }
    packages = {name.split(".")[0] for name in loaded}
    assert not heavy & packages, heavy & packages
    assert not worker_code & loaded, worker_code & loaded


def test_the_inference_package_loads_without_flask() -> None:
    loaded = _modules_after("import model.inference, model.inference.registry")
    assert "flask" not in {m.split(".")[0] for m in loaded}


# --- defaults in one place ----------------------------------------------------------------------


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_flask_config_yaml_shows_the_code_defaults() -> None:
    """The file documents every setting; the code holds the defaults. They must not drift."""
    shown = _flatten(yaml.safe_load(CONFIG_FILE.read_text()))
    defaults = Settings.model_construct().model_dump(mode="json")
    defaults["jobs"] = {n: s.limits.model_dump() for n, s in JOBS.items()}
    code = _flatten(defaults)
    drift = {k: (v, code.get(k)) for k, v in shown.items() if k in code and code[k] != v}
    assert not drift, drift
    assert not set(shown) - set(code), set(shown) - set(code)


def test_a_configured_limit_leaves_the_job_types_other_limits_as_its_own() -> None:
    """flask_config.yaml need not list a type; one that names a single limit of it (or a
    SCRIPTORIUM_JOBS__<NAME>__... variable) changes that one, not the rest to generic ones."""
    own = JobLimits(timeout_default_s=60, timeout_max_s=600, max_images=0)
    spec = JobSpec(
        name="fake", summary="", params=BaseModel, input=BaseModel, run=print, item=ResultItem
    )
    spec = dataclasses.replace(spec, limits=own)
    assert spec.limits_in(Settings()) == own
    configured = Settings(jobs={"fake": {"timeout_max_s": 300}})
    assert spec.limits_in(configured) == own.model_copy(update={"timeout_max_s": 300})
