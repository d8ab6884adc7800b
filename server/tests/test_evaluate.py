"""The evaluate job on the live IIIF stack: the service's own detect `format=iiif` output,
corrected by hand (one detection deleted, one missed illustration added), is the ground truth,
so the TP/FP/FN answer is known; bad annotations get per-page reasons; a YOLO dataset zip is
ground truth too. And the AP integration is checked against ultralytics' own code."""

from __future__ import annotations

import copy
import io
import json
import zipfile

import numpy as np
import pytest

from model.jobs.evaluate.metrics import Box, ap_per_class, tp_matrix
from server.tests.conftest import jpeg_bytes
from testkit.iiif_server import IiifServer, v3_canvas, v3_image, v3_manifest
from testkit.stack import Api

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def book(iiif_server: IiifServer, iiif_pages) -> str:
    base = f"{iiif_server.url}/evalbook"
    canvases = [
        v3_canvas(f"{base}/canvas/{i}", f"p{i}", p.width, p.height, v3_image(p))
        for i, (_, p) in enumerate(iiif_pages[1:3])
    ]
    return iiif_server.add_json(
        "evalbook/manifest.json", v3_manifest(f"{base}/manifest.json", "Eval", canvases)
    )


def _overlaps(a: list[float], b: list[float]) -> bool:
    return not (
        a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]
    )


def test_corrected_detect_output_gives_the_known_tp_fp_fn(iiif_api: Api, book: str) -> None:
    detect = iiif_api.submit_ok({"type": "detect", "input": {"manifest_url": book}})
    detected = iiif_api.wait(detect, timeout_s=180)
    assert detected["state"] == "SUCCEEDED", detected
    found = [item["detections"] for item in detected["result"]["items"]]
    assert found[0], "the model found nothing on the first canvas"
    page = iiif_api.request("GET", f"/result/{detect}?format=iiif").json()

    # The user's corrections: the last detection of canvas 0 was wrong (a false alarm now), and
    # the model missed a figure in a free corner of canvas 1 (a miss now).
    truth = copy.deepcopy(page)
    canvas0 = detected["result"]["items"][0]["canvas_id"]
    canvas1 = detected["result"]["items"][1]["canvas_id"]
    dropped = [a for a in truth["items"] if a["target"].startswith(canvas0 + "#")][-1]
    truth["items"].remove(dropped)
    corner = [5, 5, 60, 60]
    assert not any(_overlaps(corner, d["xywh"]) for d in found[1])
    truth["items"].append(
        {
            "type": "Annotation",
            "motivation": "tagging",
            "body": {"type": "TextualBody", "purpose": "tagging", "value": "illustration"},
            "target": f"{canvas1}#xywh={','.join(map(str, corner))}",
        }
    )
    total = sum(len(f) for f in found)
    task = iiif_api.submit_ok(
        {
            "type": "evaluate",
            "input": {"manifest_url": book, "annotations": [truth]},
            # Canvas 0 may be left with no box: it is still judged (a page with no illustration).
            "params": {"iou": 0.5, "pages": "all"},
        }
    )
    body = iiif_api.wait(task, timeout_s=180)
    assert body["state"] == "SUCCEEDED", body
    overall = body["result"]["evaluation"]["overall"]
    assert (overall["tp"], overall["fp"], overall["fn"]) == (total - 1, 1, 1)
    assert overall["precision"] == round((total - 1) / total, 4)
    pages = {i["canvas_id"]: i for i in body["result"]["items"]}
    assert pages[canvas0]["width"] and pages[canvas0]["coordinates"] == "canvas"
    assert (pages[canvas0]["fp"], pages[canvas0]["fn"]) == (1, 0)
    assert (pages[canvas1]["fp"], pages[canvas1]["fn"]) == (0, 1)
    assert pages[canvas1]["misses"] == [{"label": "illustration", "xywh": corner}]
    assert body["result"]["evaluation"]["per_class"]["illustration"]["tp"] == total - 1
    assert 0 < overall["mAP50_95"] <= overall["mAP50"] <= 1

    marks = iiif_api.request("GET", f"/result/{task}?format=iiif").json()["items"]
    assert sorted(a["target"]["styleClass"] for a in marks) == ["false-alarm", "miss"]


def test_bad_annotations_get_per_page_reasons(iiif_api: Api, book: str, iiif_pages) -> None:
    base = book.rsplit("/", 1)[0]
    (_, p1) = iiif_pages[1]

    def box(canvas: str, xywh: list[int]) -> dict:
        return {"type": "Annotation", "target": f"{canvas}#xywh={','.join(map(str, xywh))}"}

    page = {
        "type": "AnnotationPage",
        "items": [
            box(f"{base}/canvas/0", [p1.width - 10, 10, 200, 200]),  # runs off the canvas
            box(f"{base}/canvas/1", [10, 10, 50, 50]),
            box(f"{base}/canvas/9", [10, 10, 50, 50]),  # no such canvas
        ],
    }
    task = iiif_api.submit_ok(
        {"type": "evaluate", "input": {"manifest_url": book, "annotations": [page]}}
    )
    body = iiif_api.wait(task, timeout_s=180)
    assert body["state"] == "SUCCEEDED", body
    items = {i["canvas_id"]: i for i in body["result"]["items"]}
    assert items[f"{base}/canvas/0"]["error"]["code"] == "boxes_outside_canvas"
    assert items[f"{base}/canvas/1"]["status"] == "ok"
    codes = [p["code"] for p in body["result"]["evaluation"]["annotation_problems"]]
    assert codes == ["unknown_canvas"]
    assert body["result"]["evaluation"]["pages"] == {"evaluated": 1, "failed": 1}

    # Nothing on any canvas of the manifest: the task fails saying so (it was queued: the
    # canvases are known only once the manifest is read).
    task = iiif_api.submit_ok(
        {
            "type": "evaluate",
            "input": {
                "manifest_url": book,
                "annotations": [
                    {"type": "AnnotationPage", "items": [box(f"{base}/canvas/9", [1, 1, 5, 5])]}
                ],
            },
        }
    )
    body = iiif_api.wait(task, timeout_s=120)
    assert body["state"] == "FAILED" and body["error"]["code"] == "no_ground_truth", body


def test_a_yolo_dataset_zip_is_ground_truth(iiif_api: Api, pages) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, page in enumerate(pages[:3]):
            archive.writestr(f"images/p{i}.jpg", jpeg_bytes(page))
            w, h = page.image.size
            lines = [
                f"0 {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
                for x, y, bw, bh in page.boxes
            ]
            archive.writestr(f"labels/p{i}.txt", "\n".join(lines))
    resp = iiif_api.request(
        "POST",
        "/task",
        data={"type": "evaluate", "params": json.dumps({"iou": 0.5})},
        files=[("dataset", ("set.zip", buffer.getvalue(), "application/zip"))],
    )
    assert resp.status_code == 202, resp.text
    body = iiif_api.wait(resp.json()["task_id"], timeout_s=180)
    assert body["state"] == "SUCCEEDED", body
    overall = body["result"]["evaluation"]["overall"]
    assert overall["tp"] + overall["fn"] == sum(len(p.boxes) for p in pages[:3])
    assert overall["recall"] >= 0.5 and overall["mAP50"] >= 0.5  # the shipped model's own style
    bad = iiif_api.request(
        "POST",
        "/task",
        data={"type": "evaluate"},
        files=[("dataset", ("set.zip", b"not a zip", "application/zip"))],
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_dataset"


@pytest.mark.live  # imports ultralytics, so torch: seconds, not the fast layer
def test_average_precision_agrees_with_ultralytics() -> None:
    """Random pages: truths, and predictions near some of them (jittered) or anywhere; our
    matching gives the TP matrix, and both AP computations must agree on it."""
    metrics = pytest.importorskip("ultralytics.utils.metrics")
    rng = np.random.default_rng(0)
    tps, confs, pred_cls, target_cls = [], [], [], []
    for _ in range(30):
        truths = [
            Box(str(rng.integers(0, 3)), tuple(rng.uniform([0, 0, 20, 20], [400, 400, 120, 120])))
            for _ in range(rng.integers(0, 6))
        ]
        preds = [
            Box(t.label, tuple(np.add(t.xywh, rng.normal(0, 8, 4))), float(rng.random()))
            for t in truths
            if rng.random() < 0.8
        ] + [
            Box(
                str(rng.integers(0, 3)),
                tuple(rng.uniform([0, 0, 20, 20], [400, 400, 120, 120])),
                float(rng.random()),
            )
            for _ in range(rng.integers(0, 3))
        ]
        tps.append(tp_matrix(preds, truths))
        confs += [p.confidence for p in preds]
        pred_cls += [int(p.label) for p in preds]
        target_cls += [int(t.label) for t in truths]
    tp, conf = np.concatenate(tps), np.array(confs)
    ours, classes = ap_per_class(tp, conf, np.array(pred_cls), np.array(target_cls))
    theirs = metrics.ap_per_class(tp, conf, np.array(pred_cls), np.array(target_cls))
    # ultralytics returns (tp, fp, p, r, f1, ap, unique_classes, ...): ap is (classes x 10)
    assert classes.tolist() == theirs[6].tolist()
    np.testing.assert_allclose(ours, theirs[5], atol=1e-6)
    assert 0.2 < ours[:, 0].mean() < 1  # a case where the figures mean something
