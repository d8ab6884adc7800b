"""Fast tests of the training data path: the benchmark pages, YOLO zips, the seeded split."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from model.jobs import JobFailed
from model.jobs.train.benchmark import build
from model.jobs.train.dataset import DatasetError, read_yolo_zip, write_split, yolo_zip
from model.jobs.train.yolo_data import CLASS_NAMES, images_of, split_stems
from testkit.files import zipped

REPO = Path(__file__).resolve().parents[2]
CAP = 50 * 1024 * 1024


def _png(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 180, 150)).save(buffer, "PNG")
    return buffer.getvalue()


def test_split_is_seeded_independent_of_order_and_keeps_both_sides() -> None:
    stems = [f"p{i}" for i in range(10)]
    train, val = split_stems(stems, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert split_stems(list(reversed(stems)), 0.2, seed=3) == (train, val)
    assert split_stems(stems, 0.2, seed=4) != (train, val)
    assert split_stems(["a", "b"], 0.01, seed=0)[1] and split_stems(["a", "b"], 0.99, seed=0)[0]


def test_benchmark_pages_are_seeded_and_their_boxes_lie_on_the_page(tmp_path: Path) -> None:
    first = build(tmp_path / "a", seed=5, train=2, heldout=2)
    again = build(tmp_path / "b", seed=5, train=2, heldout=2)
    labels = sorted((first.train / "labels").iterdir())
    assert [p.read_text() for p in labels] == [
        (again.train / "labels" / p.name).read_text() for p in labels
    ]
    train_names = {p.name for p in images_of(first.train)}
    assert not train_names & {p.name for p in images_of(first.heldout)}
    for label in labels:
        rows = [[float(v) for v in line.split()] for line in label.read_text().splitlines()]
        assert rows, "every benchmark page has an illustration"
        for _cls, cx, cy, w, h in rows:
            assert min(cx - w / 2, cy - h / 2) >= 0 and max(cx + w / 2, cy + h / 2) <= 1


def test_held_out_pages_do_not_depend_on_the_training_page_count(tmp_path: Path) -> None:
    alone = build(tmp_path / "a", seed=2, train=0, heldout=2)
    beside = build(tmp_path / "b", seed=2, train=1, heldout=2)
    for label in sorted((alone.heldout / "labels").iterdir()):
        assert label.read_text() == (beside.heldout / "labels" / label.name).read_text()


def test_yolo_zip_round_trip_keeps_boxes_classes_and_digest(tmp_path: Path) -> None:
    bench = build(tmp_path / "pages", seed=1, train=3, heldout=0)
    data = yolo_zip(bench.train, CLASS_NAMES)
    dataset = read_yolo_zip(data, max_pages=10, max_bytes=CAP)
    assert dataset.classes == CLASS_NAMES and len(dataset.pages) == 3 and not dataset.skipped
    assert sum(len(p.boxes) for p in dataset.pages) == bench.boxes["train"]
    assert read_yolo_zip(data, 10, CAP).digest() == dataset.digest()
    dataset.pages[0].boxes[0] = (0.0, 0.0, 1.0, 1.0)
    assert read_yolo_zip(data, 10, CAP).digest() != dataset.digest()

    split = write_split(read_yolo_zip(data, 10, CAP), tmp_path / "split", 0.34, seed=0, max_side=0)
    assert len(split.train_pages) == 2 and len(split.val_pages) == 1
    assert {p.stem for p in images_of(tmp_path / "split" / "val")} == set(split.val_pages)


def test_unusable_pages_get_a_reason_and_the_rest_train() -> None:
    files: dict[str, bytes | str] = {"classes.txt": "figure\n"}
    for name in ("good1", "good2", "outside", "badclass", "nolabel", "empty"):
        files[f"images/{name}.png"] = _png()
    files["images/broken.png"] = b"not an image"
    files["labels/good1.txt"] = files["labels/good2.txt"] = "0 0.5 0.5 0.2 0.2\n"
    files["labels/outside.txt"] = "0 0.9 0.5 0.5 0.2\n"
    files["labels/badclass.txt"] = "3 0.5 0.5 0.2 0.2\n"
    files["labels/empty.txt"] = ""
    files["labels/broken.txt"] = "0 0.5 0.5 0.2 0.2\n"
    dataset = read_yolo_zip(zipped(files), max_pages=10, max_bytes=CAP)
    assert [p.name for p in dataset.pages] == ["good1", "good2"]
    assert dataset.pages[0].boxes[0] == pytest.approx((25.6, 19.2, 12.8, 9.6))
    reasons = {s["page"]: s["reason"] for s in dataset.skipped}
    assert reasons == {
        "badclass": "unknown_class: line 1: class 3 is not one of the 1 names",
        "broken": "undecodable: not a readable image (UnidentifiedImageError)",
        "empty": "no_boxes: its label file holds no box",
        "nolabel": "no_label_file: images/nolabel.png: no label file of its stem",
        "outside": "boxes_outside_canvas: line 1: box outside the image",
    }


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"PK nothing", "invalid_dataset"),
        (zipped({"readme.md": "hi"}), "invalid_dataset"),
        (zipped({"a.png": _png(), "a.txt": "0 0.5 0.5 0.1 0.1"}), "too_few_pages"),
        (zipped({f"{i}.png": _png() for i in range(4)}), "too_many_images"),
    ],
)
def test_unusable_datasets_are_refused_with_a_code(data: bytes, code: str) -> None:
    with pytest.raises(JobFailed) as caught:
        read_yolo_zip(data, max_pages=3, max_bytes=CAP)
    assert caught.value.code == code


def test_a_zip_that_unpacks_past_the_cap_is_refused_before_reading() -> None:
    data = zipped({"big.txt": "0" * 100_000, "a.png": _png()})
    with pytest.raises(JobFailed) as caught:
        read_yolo_zip(data, max_pages=3, max_bytes=50_000)
    assert caught.value.code == "dataset_too_large"


def test_an_epoch_item_is_a_result_item_the_status_can_show() -> None:
    from model.jobs.registry import JOBS
    from model.jobs.train import epoch_item

    item = JOBS["train"].item.model_validate(epoch_item(3, 0.5).stored()).stored()
    assert (item["index"], item["status"], item["epoch"], item["val_map50"]) == (2, "ok", 3, 0.5)


def test_training_modules_import_without_torch() -> None:
    code = (
        "import sys; import model.jobs.train.finetune, model.jobs.train.dataset, model.jobs.train; "
        "assert 'torch' not in sys.modules and 'ultralytics' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- IIIF annotations as a training set (model/jobs/train/iiif.py) ---------------------------

BOOK = "https://example.org/iiif/book"


def _tagged(canvas: str, xywh: str, label: str | None = None, selector: bool = False) -> dict:
    """A Presentation 3 annotation as viewers write it: `canvas#xywh=` or a FragmentSelector."""
    target: object = f"{canvas}#xywh={xywh}"
    if selector:
        target = {
            "type": "SpecificResource",
            "source": canvas,
            "selector": {"type": "FragmentSelector", "value": f"xywh={xywh}"},
        }
    body = [{"type": "TextualBody", "purpose": "tagging", "value": label}] if label else []
    return {"type": "Annotation", "motivation": "tagging", "body": body, "target": target}


def _canvas_pages(annotations: list[dict], loaded: dict[str, tuple]) -> list:
    """Canvases as read_iiif hands them over: the boxes by evaluate's reader, each canvas's
    image (or load error) and the part of the canvas it shows."""
    from model.jobs.evaluate.groundtruth import parse
    from model.jobs.train.iiif import CanvasPage

    truths = parse([{"type": "AnnotationPage", "items": annotations}]).by_canvas()
    pages = []
    for n, (canvas, (size, image, region, error)) in enumerate(loaded.items()):
        page = CanvasPage(f"p{n:05d}", canvas, size, truths.get(canvas, []), image, region)
        page.error = error
        pages.append(page)
    return pages


def test_iiif_annotations_become_a_training_set_in_image_pixels(tmp_path: Path) -> None:
    from model.jobs.train.iiif import training_set

    half = Image.new("RGB", (500, 400), (200, 180, 150))  # a 1000x800 canvas's image at 1/2
    c1, c2, c3, c4, c5 = (f"{BOOK}/canvas/{i}" for i in range(1, 6))
    annotations = [
        _tagged(c1, "100,200,300,100"),  # no label: the base model's only class
        _tagged(c2, "0,0,1000,800", "woodcut", selector=True),  # a new class
        _tagged(c2, "900,0,100,100", "woodcut"),
        _tagged(c3, "900,700,200,200"),  # outside the canvas: the page is skipped
        _tagged(c4, "10,10,50,50"),  # its image did not load
        _tagged(c5, "150,150,100,100"),  # the image shows canvas (100, 100, 400, 400) only
        _tagged(c5, "50,50,100,100"),  # partly beside that image: clipped to it
    ]
    canvas = (1000.0, 800.0)
    loaded = {
        c1: (canvas, half, (0, 0, 1000, 800), None),
        c2: (canvas, half, (0, 0, 1000, 800), None),
        c3: (canvas, half, (0, 0, 1000, 800), None),
        c4: (canvas, None, (0, 0, 1000, 800), ("fetch_failed", "HTTP 404")),
        c5: (canvas, Image.new("RGB", (200, 200)), (100, 100, 400, 400), None),
    }
    dataset = training_set(_canvas_pages(annotations, loaded), None, ["illustration"])
    assert dataset.classes == ["illustration", "woodcut"]
    by_canvas = {p.source: p for p in dataset.pages}
    assert set(by_canvas) == {c1, c2, c5}
    assert by_canvas[c1].boxes == [(50.0, 100.0, 150.0, 50.0)]
    assert by_canvas[c1].labels == ["illustration"]
    assert by_canvas[c2].boxes == [(0.0, 0.0, 500.0, 400.0), (450.0, 0.0, 50.0, 50.0)]
    assert by_canvas[c2].labels == ["woodcut", "woodcut"]
    assert by_canvas[c5].boxes == [(25.0, 25.0, 50.0, 50.0), (0.0, 0.0, 25.0, 25.0)]
    reasons = {s["page"]: s["reason"].split(":")[0] for s in dataset.skipped}
    assert reasons == {c3: "boxes_outside_canvas", c4: "fetch_failed"}

    # Written out as the YOLO zip path writes pages: normalised, with the class index.
    split = write_split(dataset, tmp_path / "split", 0.34, seed=0, max_side=0)
    label = (tmp_path / "split" / "all" / "labels" / f"{by_canvas[c1].name}.txt").read_text()
    assert label == "0 0.250000 0.312500 0.300000 0.125000\n"
    assert len(split.train_pages) + len(split.val_pages) == 3
    assert dataset.source_of(by_canvas[c2].name) == c2


def test_iiif_ground_truth_without_two_usable_pages_is_refused() -> None:
    from model.jobs.train.iiif import training_set

    image = Image.new("RGB", (100, 100))
    c1, c2 = f"{BOOK}/canvas/1", f"{BOOK}/canvas/2"
    annotations = [_tagged(c1, "10,10,20,20"), _tagged(c2, "10,10,20,20")]
    loaded = {c: ((100.0, 100.0), image, (0, 0, 100, 100), None) for c in (c1, c2)}
    # No label, and the base model has two classes: no default to give them.
    with pytest.raises(DatasetError) as caught:
        training_set(_canvas_pages(annotations, loaded), None, ["a", "b"])
    assert caught.value.code == "too_few_pages" and "no_label" in caught.value.message
    dataset = training_set(_canvas_pages(annotations, loaded), "b", ["a", "b"])
    assert dataset.classes == ["a", "b"] and [p.labels for p in dataset.pages] == [["b"], ["b"]]


def _train(app_client, input_: dict) -> tuple[int, dict]:
    resp = app_client.post(
        "/task", json={"type": "train", "input": input_, "params": {"name": "t"}}
    )
    return resp.status_code, resp.get_json()


def test_unusable_train_ground_truth_is_refused_before_queueing(app_client) -> None:
    manifest = f"{BOOK}/manifest.json"
    one_page = [{"type": "AnnotationPage", "items": [_tagged(f"{BOOK}/canvas/1", "1,1,9,9")]}]
    for input_, code in [
        ({}, "one_ground_truth"),
        ({"annotations": one_page}, "one_ground_truth"),
        ({"manifest_url": manifest, "dataset_url": f"{BOOK}/set.zip"}, "one_ground_truth"),
        ({"dataset_url": f"{BOOK}/set.zip", "annotations": one_page}, "annotations_with_dataset"),
        ({"manifest_url": manifest, "annotations": [{"type": "AnnotationPage"}]}, "no_boxes"),
        ({"manifest_url": manifest, "annotations": one_page}, "too_few_pages"),
    ]:
        status, body = _train(app_client, input_)
        assert status == 422 and body["error"]["code"] == code, (input_, body)


def test_a_yolo_zip_upload_is_train_ground_truth_as_for_evaluate(app_client) -> None:
    archive = zipped({"images/a.png": _png(), "labels/a.txt": "0 0.5 0.5 0.2 0.2\n"})
    form = {"type": "train", "params": '{"name": "from-upload"}'}
    resp = app_client.post("/task", data={**form, "dataset": (io.BytesIO(archive), "set.zip")})
    assert resp.status_code == 202, resp.get_json()
    both = {**form, "input": '{"dataset_url": "https://example.org/set.zip"}'}
    resp = app_client.post("/task", data={**both, "dataset": (io.BytesIO(archive), "set.zip")})
    assert resp.status_code == 422 and resp.get_json()["error"]["code"] == "one_ground_truth"
