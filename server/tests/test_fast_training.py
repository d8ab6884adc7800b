"""Fast tests of the training data path: the benchmark pages, YOLO zips, the seeded split."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from model.jobs.train.benchmark import build
from model.jobs.train.dataset import DatasetError, read_yolo_zip, write_split, yolo_zip
from model.jobs.train.yolo_data import CLASS_NAMES, images_of, split_stems

REPO = Path(__file__).resolve().parents[2]
CAP = 50 * 1024 * 1024


def _png(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 180, 150)).save(buffer, "PNG")
    return buffer.getvalue()


def _zip(files: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for name, data in files.items():
            out.writestr(name, data)
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
    dataset = read_yolo_zip(_zip(files), max_pages=10, max_bytes=CAP)
    assert [p.name for p in dataset.pages] == ["good1", "good2"]
    assert dataset.pages[0].boxes[0] == pytest.approx((25.6, 19.2, 12.8, 9.6))
    reasons = {s["page"]: s["reason"] for s in dataset.skipped}
    assert reasons == {
        "badclass": "line 1: class 3 is not one of the 1 names",
        "broken": "not a readable image",
        "empty": "no boxes",
        "nolabel": "no label file",
        "outside": "line 1: box outside the image",
    }


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"PK nothing", "bad_dataset"),
        (_zip({"readme.md": "hi"}), "no_pages"),
        (_zip({"a.png": _png(), "a.txt": "0 0.5 0.5 0.1 0.1"}), "too_few_pages"),
        (_zip({f"{i}.png": _png() for i in range(4)}), "too_many_pages"),
    ],
)
def test_unusable_datasets_are_refused_with_a_code(data: bytes, code: str) -> None:
    with pytest.raises(DatasetError) as caught:
        read_yolo_zip(data, max_pages=3, max_bytes=CAP)
    assert caught.value.code == code


def test_a_zip_that_unpacks_past_the_cap_is_refused_before_reading() -> None:
    data = _zip({"big.txt": "0" * 100_000, "a.png": _png()})
    with pytest.raises(DatasetError) as caught:
        read_yolo_zip(data, max_pages=3, max_bytes=50_000)
    assert caught.value.code == "dataset_too_large"


def test_an_epoch_item_is_a_result_item_the_status_can_show() -> None:
    from model.api.schemas import ResultItem
    from model.jobs.train import epoch_item

    item = ResultItem.model_validate(epoch_item(3, 0.5)).model_dump()
    assert (item["index"], item["status"], item["epoch"], item["val_map50"]) == (2, "ok", 3, 0.5)


def test_training_modules_import_without_torch() -> None:
    code = (
        "import sys; import model.jobs.train.finetune, model.jobs.train.dataset, model.jobs.train; "
        "assert 'torch' not in sys.modules and 'ultralytics' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
