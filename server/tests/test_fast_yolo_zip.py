"""Fast layer: the one YOLO zip reader (model/jobs/yolo_zip.py) that evaluate and train share —
where labels are found, class names, and the same code for a page's defect in both jobs."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from model.jobs import JobFailed
from model.jobs.evaluate.dataset import Dataset
from model.jobs.train.dataset import read_yolo_zip
from model.jobs.yolo_zip import YoloZip
from testkit.files import zipped

BOX = "0 0.5 0.5 0.2 0.2\n"


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), "white").save(buffer, "PNG")
    return buffer.getvalue()


def test_a_page_defect_gets_the_same_code_in_evaluate_and_train() -> None:
    files: dict[str, bytes | str] = {"data.yaml": "names: [figure]\n"}
    labels = {
        "good1": BOX,
        "good2": BOX,
        "badline": "0 0.5 0.5 0.2\n",
        "notnumbers": "0 a b c d\n",
        "badclass": "3 0.5 0.5 0.2 0.2\n",
        "outside": "0 0.95 0.5 0.2 0.2\n",
        "broken": BOX,
    }
    for name, text in labels.items():
        files[f"images/{name}.png"] = b"not an image" if name == "broken" else _png()
        files[f"labels/{name}.txt"] = text
    data = zipped(files)
    expected = {
        "badline": "bad_label_line",
        "notnumbers": "bad_label_line",
        "badclass": "unknown_class",
        "outside": "boxes_outside_canvas",
        "broken": "undecodable",
    }
    dataset = Dataset(data, ["illustration"], 20, 10**8)
    for page in dataset.pages:
        dataset.load(page)
    by_evaluate = {p.name.split("/")[1][:-4]: p.error[0] for p in dataset.pages if p.error}
    trained = read_yolo_zip(data, 20, 1 << 30)
    by_train = {s["page"]: s["reason"].split(":")[0] for s in trained.skipped}
    assert by_evaluate == by_train == expected
    assert [p.name for p in trained.pages] == ["good1", "good2"]
    page = next(p for p in dataset.pages if p.name == "images/good1.png")
    assert [(b.label, b.xywh) for b in page.boxes] == [
        (label, box)
        for label, box in zip(trained.pages[0].labels, trained.pages[0].boxes, strict=True)
    ]


def test_labels_mirror_images_sit_beside_them_or_are_the_one_of_their_stem() -> None:
    found = YoloZip(
        zipped(
            {
                "train/images/a.png": b"",
                "train/labels/a.txt": BOX,
                "b.png": b"",
                "b.txt": BOX,
                "pics/c.png": b"",
                "annotations/c.txt": BOX,
                "pics/d.png": b"",
                "x/d.txt": BOX,
                "y/d.txt": BOX,  # two of that stem elsewhere: neither is taken
                "classes.png": b"",
                "classes.txt": "figure\n",  # class names, never a label file
            }
        ),
        10,
    ).labels
    assert found == {
        "train/images/a.png": "train/labels/a.txt",
        "b.png": "b.txt",
        "pics/c.png": "annotations/c.txt",
        "pics/d.png": None,
        "classes.png": None,
    }


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ({"data.yaml": "names: [figure, 'map, old']\n"}, ["figure", "map, old"]),
        ({"data.yaml": "nc: 2\nnames:\n  1: map\n  0: figure\n"}, ["figure", "map"]),
        ({"classes.txt": "figure\n\nmap\n"}, ["figure", "map"]),
        ({}, None),
    ],
)
def test_class_names_come_from_the_zip(names: dict, expected: list[str] | None) -> None:
    assert YoloZip(zipped({**names, "a.png": b""}), 10).class_names() == expected


def test_names_that_are_not_a_list_of_names_refuse_the_zip() -> None:
    # Aliases: a few bytes that would print as a huge nested structure.
    laughs = "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nnames: [*b]\n"
    for text in (laughs, "names: {unclosed\n", "names: 7\n"):
        with pytest.raises(JobFailed) as caught:
            YoloZip(zipped({"data.yaml": text, "a.png": b""}), 10).class_names()
        assert caught.value.code == "invalid_dataset"
