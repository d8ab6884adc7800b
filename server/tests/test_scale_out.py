"""Two worker hosts on one Redis, real processes on loopback: host A is a whole stack (Redis, the
API, a worker, the Redis tunnel's server end), host B a worker-only stack (role worker) reaching
A's Redis only through spiped, with a data dir of its own. Each has a model the other lacks (the
demo model's card and weights copied under another name). One pair of stacks serves every test
here; the test that kills host B runs last.

- Tasks of one key spread over both hosts; uploads reach B through Redis (no file on any disk).
- A task naming a model runs on the host that has it; /readyz and GET /models see both hosts.
- A model imported on host A (`models add`) reaches host B through Redis and runs there.
- A model a `train` task published on one host reaches the other and runs there.
- `kill -9` of everything host B runs, mid-task: once B's lease lapses (worker.lost_grace_s),
  A's reaper requeues the task and A finishes it, each page reported once.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model.celery_app import MODEL_QUEUE_PREFIX, QUEUE
from model.jobs.train.benchmark import build
from model.jobs.train.dataset import yolo_zip
from model.jobs.train.yolo_data import CLASS_NAMES
from server.tests.conftest import ImageServer, jpeg_bytes
from testkit.live import starts_processes
from testkit.stack import (
    PROJECT_ROOT,
    Api,
    Stack,
    WorkerHost,
    free_port,
    launch_worker_host,
    start_stack,
)

pytestmark = pytest.mark.live

GRACE_S = 8  # worker.lost_grace_s on both hosts (45 s by default)
ONLY_A, ONLY_B = "illustrations-only-a", "illustrations-only-b"
DEMO = "illustrations-demo"
IMPORTED = "imported-everywhere"
TRAINED = "trained-on-one-host"


def _copy_demo_model(folder: Path, name: str) -> None:
    """The demo detector's card and weights under another name: a model only this host has."""
    weights = PROJECT_ROOT / "model" / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    card = json.loads((weights / f"{DEMO}.json").read_text())
    for suffix in (".pt", ".onnx"):
        shutil.copyfile(weights / f"{DEMO}{suffix}", folder / f"{name}{suffix}")
    card.update(name=name, weights=f"{name}.pt", onnx=f"{name}.onnx")
    (folder / f"{name}.json").write_text(json.dumps(card))


def _host_settings(models: Path) -> dict[str, str]:
    return {
        "SCRIPTORIUM_WORKER__LOST_GRACE_S": str(GRACE_S),
        "SCRIPTORIUM_MODELS__DIRS": json.dumps(["model/weights", str(models)]),
        "SCRIPTORIUM_CACHE__TTL_S": "0",  # repeated pages must cost inference
    }


@pytest.fixture(scope="module")
@starts_processes
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, WorkerHost]]:
    root = tmp_path_factory.mktemp("scale-out")
    _copy_demo_model(root / "models-a", ONLY_A)
    _copy_demo_model(root / "models-b", ONLY_B)
    a = start_stack(
        root / "host-a",
        SCRIPTORIUM_WORKER__NAME="host-a",
        # The API host opens the Redis tunnel's server end; host B reaches Redis only through it.
        SCRIPTORIUM_ROLE="api",
        SCRIPTORIUM_REDIS_TUNNEL__LISTEN=f"[127.0.0.1]:{free_port()}",
        **_host_settings(root / "models-a"),
    )
    b = None
    try:
        b = launch_worker_host(root / "host-b", a, "host-b", _host_settings(root / "models-b"))
        a.create_key("scale", "--rate", "100000/second", "--max-queued", "100000")
        yield a, b
    finally:
        if b is not None:
            b.stop()
        a.stop()


@pytest.fixture(scope="module")
def api(hosts: tuple[Stack, WorkerHost]) -> Api:
    a, _ = hosts
    return a.client(a.keys["scale"])


def _worker_of(body: dict[str, Any]) -> str | None:
    return ((body.get("result") or {}).get("provenance") or {}).get("worker")


def _check_complete(body: dict[str, Any], pages: int) -> None:
    """SUCCEEDED, every page reported exactly once."""
    assert body["state"] == "SUCCEEDED", body
    assert body["progress"] == {"done": pages, "total": pages, "failed": 0}
    indices = [item["index"] for item in body["result"]["items"]]
    assert sorted(indices) == list(range(pages)), indices


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_tasks_of_one_key_spread_over_both_hosts_uploads_included(hosts, api: Api, pages) -> None:
    a, b = hosts
    images = [(f"p{i}.jpg", jpeg_bytes(page)) for i, page in enumerate(pages)]
    task_ids = []
    for _ in range(8):
        resp = api.upload(images)
        assert resp.status_code == 202, resp.text
        task_ids.append(resp.json()["task_id"])
    bodies = [api.wait(task_id, timeout_s=300) for task_id in task_ids]
    for body in bodies:
        _check_complete(body, len(images))
    ran_on = [_worker_of(body) for body in bodies]
    assert set(ran_on) == {"host-a", "host-b"}, ran_on
    # Uploads went through Redis: no host kept a file, and none is left in Redis.
    assert _files_under(b.data_dir / "uploads") == [] and _files_under(a.data_dir / "uploads") == []
    assert a.redis().keys("sc:upload:*") == []
    print(f"8 upload tasks: {ran_on.count('host-a')} on host-a, {ran_on.count('host-b')} on host-b")


def test_readiness_and_models_see_every_live_worker(hosts, api: Api) -> None:
    a, _ = hosts
    ready = api.request("GET", "/readyz").json()
    assert ready["status"] == "ready"
    roles = sorted((w["role"], w["name"]) for w in ready["workers"])
    assert roles == [
        ("train-worker", "host-a"),
        ("train-worker", "host-b"),
        ("worker", "host-a"),
        ("worker", "host-b"),
    ]
    assert ready["queues"][QUEUE]["workers"] == 2
    assert ready["queues"][MODEL_QUEUE_PREFIX + ONLY_B] == {"queued": 0, "workers": 1}
    models = {m["name"]: m for m in api.request("GET", "/models").json()["models"]}
    assert sorted(models[DEMO]["hosts"]) == ["host-a", "host-b"] and models[DEMO]["default"]
    assert (models[ONLY_A]["hosts"], models[ONLY_B]["hosts"]) == (["host-a"], ["host-b"])
    assert models[ONLY_B]["devices"] == ["cpu"] and models[ONLY_B]["workers"] == 1
    # Host A's own disk does not have ONLY_B: the API knows it from B's heartbeat alone.
    assert not list(a.data_dir.rglob(f"{ONLY_B}*"))


def test_a_task_naming_a_model_runs_on_the_host_that_has_it(
    hosts, api: Api, image_server: ImageServer, pages
) -> None:
    url = image_server.add("routed.jpg", jpeg_bytes(pages[0]))
    body = {"type": "detect", "input": {"image_urls": [f"{url}?i={i}" for i in range(3)]}}
    routed = {
        name: [api.submit_ok({**body, "params": {"model": name}}) for _ in range(3)]
        for name in (ONLY_A, ONLY_B)
    }
    for name, host in ((ONLY_A, "host-a"), (ONLY_B, "host-b")):
        for task_id in routed[name]:
            done = api.wait(task_id, timeout_s=120)
            _check_complete(done, 3)
            provenance = done["result"]["provenance"]
            assert (provenance["worker"], provenance["model"]) == (host, name)


def _busy_host(api: Api, image_server: ImageServer, pages, only_model: str = ONLY_A) -> str:
    """A long task only one host can run (the host that has `only_model`), started: the other
    host takes the next task."""
    url = image_server.add(f"blocker-{only_model}.jpg", jpeg_bytes(pages[1]))
    blocker = api.submit_ok(
        {
            "type": "detect",
            "input": {"image_urls": [f"{url}?i={i}" for i in range(400)]},
            "params": {"model": only_model},
        }
    )
    api.wait(blocker, {"RUNNING"}, predicate=lambda s: s["progress"]["done"] >= 1)
    return blocker


def _hosts_of_model(api: Api, name: str) -> list[str]:
    models = {m["name"]: m for m in api.request("GET", "/models").json()["models"]}
    return sorted(models[name]["hosts"]) if name in models else []


def _wait_on_both_hosts(api: Api, name: str) -> None:
    deadline = time.monotonic() + 180
    while _hosts_of_model(api, name) != ["host-a", "host-b"]:  # no restart, no file copied
        assert time.monotonic() < deadline, _hosts_of_model(api, name)
        time.sleep(0.5)


def _detect_while_busy(
    api: Api, image_server: ImageServer, pages, model: str, busy_with: str
) -> tuple[str, str]:
    """One page detected with `model` while the host that has `busy_with` is busy: the worker
    and the model sha256 that ran it."""
    blocker = _busy_host(api, image_server, pages, busy_with)
    url = image_server.add(f"{model}.jpg", jpeg_bytes(pages[0]))
    task = api.submit_ok(
        {"type": "detect", "input": {"image_urls": [url]}, "params": {"model": model}}
    )
    body = api.wait(task, timeout_s=120)
    _check_complete(body, 1)
    assert api.terminate(blocker).status_code == 202
    api.wait(blocker, timeout_s=60)
    provenance = body["result"]["provenance"]
    return provenance["worker"], provenance["sha256"]


def test_an_imported_model_reaches_the_other_host_and_runs_there(
    hosts, api: Api, image_server: ImageServer, pages, checkpoints: dict[str, Path]
) -> None:
    a, b = hosts
    done = a.cli("models", "add", str(checkpoints["detector"]), "--name", IMPORTED, timeout_s=300)
    assert done.returncode == 0, done.stderr
    card = json.loads(done.stdout)

    _wait_on_both_hosts(api, IMPORTED)
    cached = sorted(p.name for p in (b.data_dir / "model-cache").iterdir())
    assert cached == sorted([f"{card['sha256']}.pt", f"{card['onnx_sha256']}.onnx"])

    ran = _detect_while_busy(api, image_server, pages, IMPORTED, busy_with=ONLY_A)
    assert ran == ("host-b", card["sha256"])
    assert a.cli("models", "remove", IMPORTED).returncode == 0


def test_a_model_trained_on_one_host_runs_on_the_other(
    hosts, api: Api, image_server: ImageServer, pages, tmp_path: Path
) -> None:
    tiny = build(tmp_path / "tiny", seed=7, train=4, heldout=1)
    dataset = image_server.add("scale-tiny.zip", yolo_zip(tiny.train, CLASS_NAMES))
    params = {"name": TRAINED, "epochs": 1, "imgsz": 160, "val_fraction": 0.25}
    task = api.submit_ok(
        {
            "type": "train",
            "input": {"dataset_url": dataset},
            "params": {**params, "publish": "always"},
        }
    )
    trained = api.wait(task, timeout_s=900)
    assert trained["state"] == "SUCCEEDED", trained
    assert trained["result"]["published"] is True
    trained_on = trained["result"]["provenance"]["worker"]
    other, only_there = ("host-b", ONLY_A) if trained_on == "host-a" else ("host-a", ONLY_B)
    _wait_on_both_hosts(api, TRAINED)

    # The training host is busy: the other one runs the detect task.
    ran = _detect_while_busy(api, image_server, pages, TRAINED, busy_with=only_there)
    assert ran == (other, trained["result"]["new"]["sha256"])
    assert api.request("DELETE", f"/models/{TRAINED}").status_code == 204  # the key's own


def test_a_killed_hosts_task_finishes_on_the_other_each_page_once(
    hosts, api: Api, image_server: ImageServer, pages
) -> None:
    a, b = hosts
    # Host A is kept busy with a task only it can run, so host B takes the next one.
    blocker = _busy_host(api, image_server, pages)
    count = 40
    upload = api.upload([(f"v{i}.jpg", jpeg_bytes(pages[i % len(pages)])) for i in range(count)])
    victim = upload.json()["task_id"]
    running = api.wait(victim, {"RUNNING"}, predicate=lambda s: s["progress"]["done"] >= 3)
    record = f"sc:task:{victim}"
    redis = a.redis()
    assert redis.hget(record, "holder").startswith("host-b:")
    b.kill_host()  # supervisord, the worker, its pool: every process of host B, at once
    killed_at = time.monotonic()
    done_at_kill = api.status(victim).json()["progress"]["done"]
    assert running["state"] == "RUNNING" and done_at_kill < count  # mid-task
    assert api.terminate(blocker).status_code == 202  # host A is free from now on
    while redis.hget(record, "attempt") == "1":  # host A's reaper requeues it, A starts it
        assert time.monotonic() - killed_at < GRACE_S + 30, "the task did not come back"
        time.sleep(0.1)
    back_s = time.monotonic() - killed_at
    body = api.wait(victim, timeout_s=GRACE_S + 120)
    finished_s = time.monotonic() - killed_at
    _check_complete(body, count)  # each page once: the dead attempt's pages are not redone
    assert _worker_of(body) == "host-a"
    assert redis.hget(record, "holder").startswith("host-a:")
    assert redis.hget(record, "requeues") == "1" and redis.hget(record, "attempt") == "2"
    assert GRACE_S - 4 <= back_s <= GRACE_S + 5, back_s
    assert finished_s <= GRACE_S + 60, finished_s
    assert redis.keys("sc:upload:*") == []
    print(
        f"host B killed after {done_at_kill}/{count} pages: task back on host A after "
        f"{back_s:.1f} s (grace {GRACE_S} s), finished after {finished_s:.1f} s"
    )
