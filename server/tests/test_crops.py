"""The crops job (added through the job registry alone): the illustrations a detect task found,
as IIIF region URLs that a level-1 image service (the `iiif` reference server) really cuts."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image

from testkit.iiif_server import IiifServer, v3_canvas, v3_manifest
from testkit.stack import Api, Stack

pytestmark = pytest.mark.live


def _iou(a: list[int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def _level1_manifest(iiif_server: IiifServer, level1_server: str, size: tuple[int, int]) -> str:
    service = {"id": f"{level1_server}/3.0_pil/page", "type": "ImageService3", "profile": "level1"}
    body = {
        "id": f"{level1_server}/3.0_pil/page/full/max/0/default.jpg",
        "type": "Image",
        "format": "image/jpeg",
        "width": size[0],
        "height": size[1],
        "service": [service],
    }
    base = f"{iiif_server.url}/crops"
    canvas = v3_canvas(f"{base}/c/1", "page", size[0], size[1], body)
    return iiif_server.add_json("crops/m.json", v3_manifest(f"{base}/m.json", "crops", [canvas]))


def test_crops_cut_the_detected_illustrations_out_of_the_full_image(
    iiif_api: Api, iiif_server: IiifServer, level1_server: str, iiif_pages
) -> None:
    page, _ = iiif_pages[0]
    manifest = _level1_manifest(iiif_server, level1_server, page.image.size)
    detect = iiif_api.submit_ok(
        {"type": "detect", "input": {"manifest_url": manifest}, "params": {"confidence": 0.3}}
    )
    detected = iiif_api.wait(detect, timeout_s=120)
    assert detected["state"] == "SUCCEEDED", detected
    found = detected["result"]["items"][0]["detections"]
    assert found, "the model found nothing to crop"

    crops_id = iiif_api.submit_ok({"type": "crops", "input": {"task_id": detect}})
    body = iiif_api.wait(crops_id, timeout_s=60)
    assert body["state"] == "SUCCEEDED", body
    (item,) = body["result"]["items"]
    assert len(item["crops"]) == len(found)
    for crop in item["crops"]:
        # The canvas is the image's size: boxes carry over unchanged, in full-image pixels.
        assert any(_iou(crop["xywh"], box) > 0.5 for box in page.boxes), crop
        answer = requests.get(crop["region_url"], timeout=30)
        assert answer.status_code == 200, crop["region_url"]
        cut = Image.open(io.BytesIO(answer.content))
        assert cut.size == tuple(crop["xywh"][2:])  # the service cut exactly that region
        # ...and it is the same pixels as the page at that place.
        x, y, w, h = crop["xywh"]
        expected = page.image.crop((x, y, x + w, y + h)).convert("L").resize((16, 16))
        got = cut.convert("L").resize((16, 16))
        diff = np.abs(np.asarray(expected, float) - np.asarray(got, float)).mean()
        assert diff < 20, diff  # JPEG noise only


def test_crops_of_another_keys_or_unfinished_task_fail_clearly(
    iiif_stack: Stack, iiif_api: Api
) -> None:
    other = iiif_stack.client(iiif_stack.keys["iiif-other"])
    mine = iiif_api.submit_ok({"type": "noop"})
    iiif_api.wait(mine)
    stolen = other.wait(other.submit_ok({"type": "crops", "input": {"task_id": mine}}))
    assert (stolen["state"], stolen["error"]["code"]) == ("FAILED", "source_not_found")
    wrong = iiif_api.wait(iiif_api.submit_ok({"type": "crops", "input": {"task_id": mine}}))
    assert (wrong["state"], wrong["error"]["code"]) == ("FAILED", "source_unusable")
    bad = iiif_api.submit({"type": "crops", "input": {"task_id": "../etc/passwd"}})
    assert bad.status_code == 422
    assert iiif_api.submit({"type": "crops"}).status_code == 422  # input is required
