"""Fast layer: the evaluate job's pure parts — reading ground truth from the annotation shapes
people send (and from our own detect output), matching and metrics against hand-counted
answers, judging bad annotations, the IIIF marks of misses and false alarms, and the API's
refusals of unusable inline ground truth."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from model.jobs.evaluate import EvaluateParams
from model.jobs.evaluate.dataset import Dataset
from model.jobs.evaluate.groundtruth import annotation_references, parse
from model.jobs.evaluate.metrics import Box, ap_per_class, page_outcome, summarise, tp_matrix
from model.jobs.evaluate.run import _Judge
from model.outputs.annotations import ResultLinks, annotation_page
from testkit.files import zipped

C = "https://example.org/iiif/book/canvas/p1"


def _v3_page(*annotations: dict) -> dict:
    return {"type": "AnnotationPage", "id": "https://example.org/ap/1", "items": list(annotations)}


def test_presentation_3_fragments_and_selectors_give_boxes_and_labels() -> None:
    parsed = parse(
        [
            _v3_page(
                {
                    "type": "Annotation",
                    "motivation": "tagging",
                    "body": {"type": "TextualBody", "value": "woodcut", "purpose": "tagging"},
                    "target": f"{C}#xywh=10,20,30,40",
                },
                {  # Mirador 3's annotation editor: a FragmentSelector beside an SvgSelector
                    "type": "Annotation",
                    "motivation": "commenting",
                    "body": {"type": "TextualBody", "value": "<p>map</p>"},
                    "target": {
                        "type": "SpecificResource",
                        "source": {"id": C, "type": "Canvas"},
                        "selector": [
                            {"type": "FragmentSelector", "value": "xywh=pixel:1,2,3,4"},
                            {"type": "SvgSelector", "value": "<svg/>"},
                        ],
                    },
                },
                {"type": "Annotation", "motivation": "painting", "target": C},
                {"type": "Annotation", "body": [], "target": C},  # whole canvas: not a box
            )
        ]
    )
    assert [(b.canvas, b.label, b.xywh) for b in parsed.boxes] == [
        (C, "woodcut", (10, 20, 30, 40)),
        (C, "map", (1, 2, 3, 4)),
    ]
    assert [p["code"] for p in parsed.problems] == ["no_box"]


def test_presentation_2_lists_with_tags_and_choices() -> None:
    parsed = parse(
        {
            "@type": "sc:AnnotationList",
            "resources": [
                {
                    "@type": "oa:Annotation",
                    "resource": [{"@type": "oa:Tag", "chars": "initial"}],
                    "on": f"{C}#xywh=5,5,10,10",
                },
                {
                    "@type": "oa:Annotation",
                    "resource": {"@type": "dctypes:Text", "chars": "no tag here"},
                    "on": [
                        {
                            "@type": "oa:SpecificResource",
                            "full": C,
                            "selector": {
                                "@type": "oa:Choice",
                                "default": {
                                    "@type": "oa:FragmentSelector",
                                    "value": "xywh=1,1,2,2",
                                },
                                "item": {"@type": "oa:SvgSelector", "value": "<svg/>"},
                            },
                        }
                    ],
                },
                {"@type": "oa:Annotation", "on": f"{C}#xywh=1,1,0,5"},
            ],
        }
    )
    assert [(b.label, b.xywh) for b in parsed.boxes] == [
        ("initial", (5, 5, 10, 10)),
        ("no tag here", (1, 1, 2, 2)),
    ]
    assert [p["code"] for p in parsed.problems] == ["empty_box"]


@pytest.mark.parametrize("version", [3, 2])
def test_our_own_detect_output_is_ground_truth(version: int) -> None:
    item = {
        "index": 0,
        "status": "ok",
        "manifest": 0,
        "canvas_index": 0,
        "canvas_id": C,
        "detections": [
            {"xywh": [10, 20, 30, 40], "confidence": 0.93, "label": "illustration"},
            {"xywh": [50, 60, 70, 80], "confidence": 0.41, "label": "illustration"},
        ],
    }
    page = annotation_page(
        {"index": 0, "version": version}, [item], ResultLinks("https://api/result/t")
    )
    parsed = parse([json.loads(json.dumps(page))])
    assert [(b.label, b.xywh) for b in parsed.boxes] == [
        ("illustration", (10, 20, 30, 40)),
        ("illustration", (50, 60, 70, 80)),
    ]
    assert parsed.problems == []


@pytest.mark.parametrize(
    "annotation",
    [
        {"type": "Annotation", "target": f"{C}#xywh=1.2.3,4,5,6"},
        {"type": "Annotation", "target": f"{C}#xywh=-,.,5,6"},
        {"type": "Annotation", "target": {"source": [C], "selector": {"value": 5}}},
        {"type": "Annotation", "target": {"type": "SpecificResource"}, "body": [[1], 2]},
        {"type": "Annotation", "on": [None, 3, {"full": {"@id": C}}], "resource": {"chars": 5}},
        ["not", "an", "annotation"],
        "https://example.org/annotation/1",
    ],
)
def test_malformed_annotations_are_problems_not_errors(annotation) -> None:
    parsed = parse([_v3_page(annotation)])
    assert parsed.boxes == [] and parsed.problems


def test_a_manifest_s_own_annotations_are_found_embedded_or_referenced() -> None:
    manifest = {
        "type": "Manifest",
        "items": [
            {
                "id": C,
                "type": "Canvas",
                "annotations": [
                    _v3_page({"type": "Annotation", "target": f"{C}#xywh=1,1,5,5"}),
                    {"id": "https://example.org/ap/2", "type": "AnnotationPage"},
                ],
            }
        ],
    }
    embedded, urls = annotation_references(manifest)
    assert len(parse(embedded).boxes) == 1
    assert urls == ["https://example.org/ap/2"]


def _boxes(*specs: tuple) -> list[Box]:
    return [Box(label, xywh, conf) for label, xywh, conf in specs]


def test_matching_gives_the_hand_counted_tp_fp_fn() -> None:
    truths = _boxes(
        ("a", (0, 0, 10, 10), 1), ("a", (100, 100, 10, 10), 1), ("b", (50, 0, 10, 10), 1)
    )
    preds = _boxes(
        ("a", (1, 1, 10, 10), 0.9),  # IoU 0.68 with the first: TP
        ("a", (0, 0, 10, 10), 0.8),  # same box again, already taken: FP
        ("a", (50, 0, 10, 10), 0.7),  # on the "b" box with the wrong label: FP
        ("a", (100, 100, 10, 10), 0.1),  # right, but below the confidence: not counted
    )
    outcome = page_outcome(preds, truths, iou=0.5, confidence=0.25)
    assert outcome.counts() == {"tp": 1, "fp": 2, "fn": 2}
    assert [t.xywh for t in outcome.misses] == [(100, 100, 10, 10), (50, 0, 10, 10)]
    # At IoU 0.7 the first prediction overlaps too little; the second, exact, takes the box.
    strict = page_outcome(preds, truths, iou=0.7, confidence=0.25)
    assert strict.counts() == {"tp": 1, "fp": 2, "fn": 2}
    assert [p.confidence for p, _ in strict.matched] == [0.8]
    result = summarise([(preds, truths)], iou=0.5, confidence=0.25)
    assert result["overall"] | {} == {
        **result["overall"],
        "tp": 1,
        "fp": 2,
        "fn": 2,
        "precision": 0.3333,
        "recall": 0.3333,
    }
    assert result["per_class"]["b"]["fn"] == 1 and result["per_class"]["b"]["mAP50"] == 0.0


def test_average_precision_of_a_hand_computed_case() -> None:
    # Two truths; by confidence: TP, FP, TP. Precision envelope: 1 up to recall 0.5, then 2/3
    # up to recall 1: AP = 0.5 * 1 + 0.5 * 2/3 = 0.8333 (101-point sampling: within 0.01).
    truths = _boxes(("a", (0, 0, 10, 10), 1), ("a", (20, 0, 10, 10), 1))
    preds = _boxes(
        ("a", (0, 0, 10, 10), 0.9), ("a", (40, 0, 10, 10), 0.8), ("a", (20, 0, 10, 10), 0.7)
    )
    tp = tp_matrix(preds, truths)
    assert tp[:, 0].tolist() == [True, False, True]
    ap, classes = ap_per_class(
        tp, [0.9, 0.8, 0.7] and _arr(0.9, 0.8, 0.7), _arr(0, 0, 0), _arr(0, 0)
    )
    assert classes.tolist() == [0]
    assert ap[0, 0] == pytest.approx(0.8333, abs=0.01)
    overall = summarise([(preds, truths)], 0.5, 0.25)["overall"]
    assert overall["mAP50"] == pytest.approx(0.8333, abs=0.01)
    assert overall["mAP50_95"] == overall["mAP50"]  # exact boxes: the same at every IoU


def _arr(*values: float):
    import numpy as np

    return np.array(values)


def test_bad_annotations_get_a_reason_per_page() -> None:
    from model.jobs.evaluate.groundtruth import TruthBox

    judge = _Judge(EvaluateParams(), ["illustration"])
    boxes, reason = judge.truths([TruthBox(C, None, (0, 0, 10, 10))], (100, 100))
    assert reason is None and boxes[0].label == "illustration"  # the model's only class
    _, reason = judge.truths([TruthBox(C, "x", (90, 90, 20, 20))], (100, 100))
    assert reason[0] == "boxes_outside_canvas"
    _, reason = judge.truths([TruthBox(C, "woodcut", (0, 0, 10, 10))], (100, 100))
    assert reason[0] == "unknown_labels"
    agnostic = _Judge(EvaluateParams(class_agnostic=True), ["illustration"])
    assert agnostic.truths([TruthBox(C, "woodcut", (0, 0, 10, 10))], (100, 100))[1] is None
    _, reason = _Judge(EvaluateParams(), ["a", "b"]).truths(
        [TruthBox(C, None, (0, 0, 1, 1))], (9, 9)
    )
    assert reason[0] == "no_label"


def test_misses_and_false_alarms_are_marked_in_their_own_colours() -> None:
    item = {
        "index": 0,
        "status": "ok",
        "manifest": 0,
        "canvas_index": 0,
        "canvas_id": C,
        "misses": [{"label": "illustration", "xywh": [1.4, 2, 3, 4]}],
        "false_alarms": [{"label": "illustration", "xywh": [5, 6, 7, 8], "confidence": 0.5}],
    }
    page = annotation_page({"index": 0, "version": 3}, [item], ResultLinks("https://api/r/t"))
    styles = [a["target"]["styleClass"] for a in page["items"]]
    assert styles == ["miss", "false-alarm"]
    sheets = {a["stylesheet"]["value"] for a in page["items"]}
    assert len(sheets) == 2  # two colours
    assert page["items"][0]["target"]["selector"]["value"] == "xywh=1,2,3,4"
    assert page["items"][0]["body"][0]["value"] == "miss: illustration"


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, "PNG")
    return buffer.getvalue()


def test_a_yolo_zip_gives_boxes_in_pixels_and_reasons_for_bad_lines() -> None:
    dataset = Dataset(
        zipped(
            {
                "data.yaml": "names: [figure, map]\n",
                "images/a.png": _png((200, 100)),
                "labels/a.txt": "1 0.5 0.5 0.2 0.4\n",
                "images/b.png": _png((10, 10)),
                "labels/b.txt": "7 0.5 0.5 0.2 0.2\n",
                "images/c.png": _png((10, 10)),
                "labels/c.txt": "0 0.95 0.5 0.2 0.2\n",
                "images/d.png": _png((10, 10)),  # no label file: an empty page
            }
        ),
        ["illustration"],
        10,
        10**8,
    )
    for page in dataset.pages:
        dataset.load(page)
    a, b, c, d = dataset.pages
    assert [(x.label, x.xywh) for x in a.boxes] == [("map", (80.0, 30.0, 40.0, 40.0))]
    assert b.error[0] == "unknown_class" and c.error[0] == "boxes_outside_canvas"
    assert d.error is None and d.boxes == []


def test_a_zip_page_is_decoded_as_detect_decodes_an_upload() -> None:
    """The model sees the pixels a detect task on the same image would give it (shrunk once to
    its input size, a JPEG at reduced scale); the truth stays in the full image's pixels."""
    from model.pipeline.memory import ByteBudget
    from model.sources.images import decode_within

    buffer = io.BytesIO()
    Image.effect_noise((800, 400), 60).convert("RGB").save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    files = {"images/a.jpg": jpeg, "labels/a.txt": "0 0.5 0.5 0.25 0.5\n"}
    dataset = Dataset(zipped(files), ["illustration"], 10, 10**8, analyse_side=200)
    (page,) = dataset.pages
    dataset.load(page)
    assert page.size == (800, 400) and page.scale == 0.25 and page.image.size == (200, 100)
    assert [b.xywh for b in page.boxes] == [(300.0, 100.0, 200.0, 200.0)]
    upload, _, _ = decode_within(jpeg, 10**8, 200, ByteBudget(1 << 30), reduce=True)
    assert page.image.tobytes() == upload.tobytes()


def _evaluate(app_client, input_: dict) -> tuple[int, dict]:
    resp = app_client.post("/task", json={"type": "evaluate", "input": input_})
    return resp.status_code, resp.get_json()


def test_unusable_inline_ground_truth_is_refused_before_queueing(app_client) -> None:
    manifest = "https://example.org/iiif/book/manifest.json"
    status, body = _evaluate(
        app_client,
        {"manifest_url": manifest, "annotations": [_v3_page({"type": "Annotation", "target": C})]},
    )
    assert status == 422 and body["error"]["code"] == "no_boxes"
    assert "whole canvas" in body["error"]["message"]
    status, body = _evaluate(app_client, {"annotations": [_v3_page()]})
    assert status == 422 and body["error"]["code"] == "one_ground_truth"
    huge = [_v3_page(*[{"type": "Annotation", "target": f"{C}#xywh=1,1,1,1"}] * 7_000)]
    # Over the inline cap (512 KiB) yet under the request body's (1 MB), which answers first.
    assert 512 * 1024 < len(json.dumps(huge)) < 1000 * 1000
    status, body = _evaluate(app_client, {"manifest_url": manifest, "annotations": huge})
    assert status == 422 and body["error"]["code"] == "annotations_too_large"
