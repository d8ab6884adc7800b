"""The train job on the live stack: a few epochs on a tiny set, the published model then used by
detect; the same pages as IIIF canvases with annotations, the model then used by evaluate;
cancel mid-training; the per-key cap; bad datasets. Speed is bench/train.py's business:
no timing here."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from PIL import Image

from model.jobs.train.benchmark import build
from model.jobs.train.dataset import read_yolo_zip, yolo_zip
from model.jobs.train.yolo_data import CLASS_NAMES, images_of
from server.tests.conftest import ImageServer
from testkit.iiif_server import IiifServer, v3_canvas, v3_image, v3_manifest
from testkit.stack import Api, Stack

pytestmark = pytest.mark.live

# Training on a CPU shared with the other live tests: generous, never asserted on.
TRAIN_WAIT_S = 900


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory, image_server: ImageServer) -> dict:
    bench = build(tmp_path_factory.mktemp("tiny"), seed=7, train=4, heldout=1)
    data = yolo_zip(bench.train, CLASS_NAMES)
    url = image_server.add(f"tiny-{uuid.uuid4().hex[:8]}.zip", data)
    page = (bench.heldout / "images").iterdir().__next__()
    return {
        "url": url,
        "train": bench.train,
        "digest": read_yolo_zip(data, 10, 1 << 30).digest(),
        "page_url": image_server.add(f"heldout-{page.name}", page.read_bytes()),
    }


def _train(api: Api, url: str, **params: object) -> str:
    body = {"type": "train", "input": {"dataset_url": url}, "params": params}
    return api.submit_ok(body)


def _models(api: Api) -> dict[str, dict]:
    return {m["name"]: m for m in api.request("GET", "/models").json()["models"]}


def _remove(stack: Stack, name: str) -> None:
    stack.cli("models", "remove", name)


def test_train_publishes_a_model_that_detect_then_uses(
    stack: Stack, api: Api, other_api: Api, tiny_set: dict
) -> None:
    name = f"tuned-{uuid.uuid4().hex[:8]}"
    task = _train(
        api, tiny_set["url"], name=name, epochs=2, imgsz=160, val_fraction=0.25, publish="always"
    )
    try:
        done = api.wait(task, timeout_s=TRAIN_WAIT_S)
        assert done["state"] == "SUCCEEDED", done
        result = done["result"]
        assert done["progress"]["done"] == done["progress"]["total"] == 2
        assert [item["epoch"] for item in result["items"]] == [1, 2]
        assert all(0 <= item["val_map50"] <= 1 for item in result["items"])
        for side in ("base", "new"):
            assert 0 <= result[side]["mAP50_95"] <= result[side]["mAP50"] <= 1
        assert result["published"] is True and len(result["held_out_pages"]) == 1
        provenance = result["provenance"]
        shipped = _models(api)["illustrations-demo"]
        assert provenance["dataset_sha256"] == tiny_set["digest"]
        assert provenance["base_sha256"] == shipped["sha256"]
        assert (provenance["epochs_run"], provenance["seed"]) == (2, 0)
        assert {"ultralytics", "torch"} <= set(provenance["versions"])

        listed = _models(api)[name]
        assert listed["sha256"] == result["new"]["sha256"] and listed["input_size"] == 160
        # Trained by a key that is not an admin: its model alone (docs/models.md).
        assert listed["owner"] == "alice" and name not in _models(other_api)
        detect = api.submit_ok(
            {
                "type": "detect",
                "input": {"image_urls": [tiny_set["page_url"]]},
                "params": {"model": name, "confidence": 0.01},
            }
        )
        found = api.wait(detect, timeout_s=300)
        assert found["state"] == "SUCCEEDED", found
        assert found["result"]["provenance"]["model"] == name
        assert found["result"]["provenance"]["sha256"] == result["new"]["sha256"]
    finally:
        _remove(stack, name)


@pytest.fixture(scope="module")
def tiny_book(tiny_set: dict, iiif_server: IiifServer) -> dict:
    """The tiny set's pages behind level-0 IIIF image services, on canvases twice the images'
    size, and their boxes as a P3 AnnotationPage in canvas coordinates (fragments and
    FragmentSelectors, as viewers write them)."""
    base = f"{iiif_server.url}/trainbook-{uuid.uuid4().hex[:8]}"
    canvases, annotations = [], []
    for n, path in enumerate(images_of(tiny_set["train"])):
        with Image.open(path) as image:
            published = iiif_server.publish(f"{base.rsplit('/', 1)[1]}-{n}", image, 3)
        canvas_id = f"{base}/canvas/{n}"
        width, height = 2 * published.width, 2 * published.height
        canvases.append(v3_canvas(canvas_id, f"p{n}", width, height, v3_image(published)))
        label = path.parent.parent / "labels" / f"{path.stem}.txt"
        for i, line in enumerate(label.read_text().splitlines()):
            cx, cy, w, h = (float(v) for v in line.split()[1:])
            box = ((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height)
            xywh = ",".join(f"{v:.0f}" for v in box)
            target: object = f"{canvas_id}#xywh={xywh}"
            if i % 2:
                selector = {"type": "FragmentSelector", "value": f"xywh={xywh}"}
                target = {"type": "SpecificResource", "source": canvas_id, "selector": selector}
            body = {"type": "TextualBody", "purpose": "tagging", "value": "illustration"}
            annotations.append({"type": "Annotation", "body": body, "target": target})
    manifest = v3_manifest(f"{base}/manifest.json", "Tiny", canvases)
    url = iiif_server.add_json(f"{base.rsplit('/', 1)[1]}/manifest.json", manifest)
    page = {"type": "AnnotationPage", "items": annotations}
    return {"manifest_url": url, "annotations": [page], "canvases": [c["id"] for c in canvases]}


def test_train_from_iiif_annotations_then_evaluate_with_the_new_model(
    stack: Stack, api: Api, tiny_book: dict
) -> None:
    name = f"from-iiif-{uuid.uuid4().hex[:8]}"
    truth = {"manifest_url": tiny_book["manifest_url"], "annotations": tiny_book["annotations"]}
    params = {"name": name, "epochs": 1, "imgsz": 160, "val_fraction": 0.25, "publish": "always"}
    task = api.submit_ok({"type": "train", "input": truth, "params": params})
    try:
        done = api.wait(task, timeout_s=TRAIN_WAIT_S)
        assert done["state"] == "SUCCEEDED", done
        result = done["result"]
        assert result["published"] is True and result["skipped_pages"] == []
        assert result["train_pages"] == 3
        assert set(result["held_out_pages"]) < set(tiny_book["canvases"])
        assert len(result["provenance"]["dataset_sha256"]) == 64

        # The new model judged on the same ground truth: every canvas evaluated, in canvas
        # coordinates (the images are half the canvases' size).
        evaluate = api.submit_ok({"type": "evaluate", "input": truth, "params": {"model": name}})
        body = api.wait(evaluate, timeout_s=300)
        assert body["state"] == "SUCCEEDED", body
        assert body["result"]["provenance"]["sha256"] == result["new"]["sha256"]
        evaluation = body["result"]["evaluation"]
        assert evaluation["pages"] == {"evaluated": 4, "failed": 0}
        overall = evaluation["overall"]
        assert overall["tp"] + overall["fn"] == sum(
            len(page["items"]) for page in tiny_book["annotations"]
        )
    finally:
        _remove(stack, name)


def test_cancel_stops_training_and_publishes_nothing(
    stack: Stack, api: Api, tiny_set: dict
) -> None:
    name = f"cancelled-{uuid.uuid4().hex[:8]}"
    task = _train(api, tiny_set["url"], name=name, epochs=200, imgsz=160, publish="always")
    # One training task per key at once (training.max_active_per_key): the next one waits.
    refused = api.submit(
        {"type": "train", "input": {"dataset_url": tiny_set["url"]}, "params": {"name": "x2"}}
    )
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_active"
    api.wait(task, {"RUNNING"}, TRAIN_WAIT_S, lambda body: body["progress"]["done"] >= 1)
    assert api.terminate(task).status_code == 202
    ended = api.wait(task, timeout_s=120)
    assert ended["state"] == "CANCELLED", ended
    assert ended["progress"]["done"] < 200
    assert name not in _models(api)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"name": "../evil"}, "invalid_request"),
        ({"name": "ok", "imgsz": 100}, "invalid_request"),
        ({"name": "illustrations-demo.pt"}, "invalid_request"),
    ],
)
def test_bad_params_get_a_4xx(api: Api, tiny_set: dict, params: dict, code: str) -> None:
    resp = api.submit(
        {"type": "train", "input": {"dataset_url": tiny_set["url"]}, "params": params}
    )
    assert 400 <= resp.status_code < 500 and "error" in resp.json(), resp.text


def test_a_dataset_without_labels_fails_with_its_reason(
    api: Api, image_server: ImageServer, tmp_path: Path
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(3):
        (tmp_path / "images" / f"{i}.png").write_bytes(b"not really a png")
    url = image_server.add(f"bad-{uuid.uuid4().hex[:8]}.zip", yolo_zip(tmp_path, ["figure"]))
    done = api.wait(_train(api, url, name=f"never-{uuid.uuid4().hex[:8]}"), timeout_s=120)
    assert done["state"] == "FAILED" and done["error"]["code"] == "too_few_pages", done
