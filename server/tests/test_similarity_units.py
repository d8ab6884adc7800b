"""Similarity pieces without a stack: request models, model cards with task "embed", the copy
renderer, features (and their cache encoding), shortlisting, verification and scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from model.inference.registry import discover
from model.jobs import JobCancelled
from model.jobs.similarity import SimilarityInput as Input
from model.jobs.similarity import SimilarityParams as Params
from model.jobs.similarity import compare
from model.jobs.similarity.embedders import gem, pool, preprocess
from model.jobs.similarity.features import pack, page_items, unpack
from model.settings import Settings
from synthetic.copies import Placement, copy_of, page_with_illustrations, render_illustration

WEIGHTS = Path(__file__).resolve().parents[2] / "model" / "weights"


def test_input_needs_two_to_fifty_named_http_documents() -> None:
    ok = Input(documents={"a": "http://x.org/1", "b.2:v-3": "https://x.org/2"})
    assert list(ok.documents) == ["a", "b.2:v-3"]
    for bad in (
        {"a": "http://x.org/1"},
        {f"d{i}": "http://x.org" for i in range(51)},
        {"a": "http://x.org/1", "b": "file:///etc/passwd"},
        {"a": "http://x.org/1", "": "http://x.org/2"},
        {"a": "http://x.org/1", "b/c": "http://x.org/2"},
    ):
        with pytest.raises(ValidationError):
            Input(documents=bad)
    with pytest.raises(ValidationError):
        Params(level="book")
    assert Params().model_dump()["level"] == "region"


def test_embed_cards_are_listed_without_classes(tmp_path: Path) -> None:
    (tmp_path / "x.onnx").write_bytes(b"not really")
    (tmp_path / "x.json").write_text(
        json.dumps({"task": "embed", "weights": "x.onnx", "imgsz": 64})
    )
    (tmp_path / "bad.json").write_text(
        json.dumps({"task": "embed", "weights": "x.onnx", "imgsz": 64, "format": "pickle"})
    )
    found = discover([WEIGHTS, tmp_path])
    assert found["x"].task == "embed" and found["x"].format == "onnx"
    assert found["x"].describe("none")["backends"] == ["onnx"] and found["x"].classes == []
    assert "bad" not in found  # an unknown format is not a model
    backbone = found["illustrations-demo-backbone"]
    assert backbone.format == "ultralytics-backbone" and backbone.options["layers"] == [4, 6, 9]
    assert backbone.sha256 == found["illustrations-demo"].sha256
    assert Settings().similarity.embed_model == "illustrations-demo-backbone"


def test_pooling_gives_unit_vectors() -> None:
    maps = np.random.default_rng(0).random((3, 5, 4, 4)).astype(np.float32)
    assert gem(np.ones((1, 2, 3, 3)) * 2)[0].tolist() == pytest.approx([2.0, 2.0])
    vectors = pool([maps, np.ones((3, 7), np.float32)])
    assert vectors.shape == (3, 12)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(3))
    batch = preprocess([render_illustration(1)], 64)
    assert batch.shape == (1, 3, 64, 64) and batch.min() >= 0.0 and batch.max() <= 1.0


def test_copy_renderer_boxes_hold_the_copy() -> None:
    art = render_illustration(3, 300, 240, "diagram")
    original = page_with_illustrations(10, [Placement(art)])
    copy = copy_of(art, 11, others=1)
    assert original.boxes[0][2:] == art.size
    assert len(copy.boxes) == 2 and copy.boxes[0] != original.boxes[0]
    assert page_with_illustrations(12, []).boxes == []  # text only


def _items(page, index: int, regions: bool = True):
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in page.boxes] if regions else None
    items, _ = page_items(index, page.image, 1.0, xyxy, 1024)
    for item in items:
        item.embedding = np.ones(4, np.float32) / 2
    return items


def test_copies_verify_and_distinct_pictures_do_not() -> None:
    arts = [render_illustration(40 + k, 320, 260, kind) for k, kind in enumerate(("line", "plate"))]
    page_a = page_with_illustrations(1, [Placement(arts[0]), Placement(arts[1], 0.9)])
    page_b = copy_of(arts[0], 2, others=1)  # arts[0] again, plus a new picture
    a, b = _items(page_a, 0), _items(page_b, 1)
    copy = compare.verify_pair(a[0], b[0], 0.0)
    assert copy.score > 0.6 and copy.verification.inliers > 20
    assert copy.area_a is not None and copy.area_b is not None
    for first, second in ((a[0], b[1]), (a[1], b[0]), (a[1], b[1])):
        assert compare.verify_pair(first, second, 0.0).score < 0.1
    matches, stats = compare.compare(a, b, same=False, candidates=5, top_k=2)
    assert (matches[0].a, matches[0].b) == (a[0], b[0]) and stats.verified == 4


def test_page_level_finds_a_copy_inside_a_page() -> None:
    art = render_illustration(77, 340, 280, "engraving")
    first = _items(page_with_illustrations(5, [Placement(art)]), 0, regions=False)[0]
    second = _items(copy_of(art, 6), 1, regions=False)[0]
    other = _items(page_with_illustrations(7, [Placement(render_illustration(78))]), 2, False)[0]
    assert compare.verify_pair(first, second, 0.0).score > 0.3
    assert compare.verify_pair(first, other, 0.0).score < 0.1


def test_features_survive_the_cache_encoding() -> None:
    page = page_with_illustrations(3, [Placement(render_illustration(5))])
    items = _items(page, 4)
    back = unpack(pack(items), 9)
    assert [i.page for i in back] == [9] and back[0].region == items[0].region
    assert back[0].box == pytest.approx(items[0].box)
    assert np.abs(back[0].local.descriptors - items[0].local.descriptors).max() < 0.01
    assert (back[0].thumb == items[0].thumb).all()
    assert compare.verify_pair(back[0], items[0], 0.0).score > 0.9  # still itself


def test_shortlist_skips_self_and_mirrored_pairs() -> None:
    sims = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    assert compare.shortlist(sims, 1, same=True) == [(0, 1), (1, 2)]
    assert compare.shortlist(sims, 5, same=True) == [(0, 1), (0, 2), (1, 2)]
    assert compare.shortlist(sims, 1, same=False) == [(0, 0), (1, 1), (2, 2)]


def test_scores_discount_chance_inliers_and_lines() -> None:
    assert compare.evidence(5) == 0.0 and compare.evidence(11) == pytest.approx(0.632, abs=1e-3)
    rng = np.random.default_rng(0)
    axis = np.column_stack([np.linspace(0, 300, 30), 50 + rng.random(30) * 6])
    band = np.column_stack([np.linspace(0, 300, 30), 50 + rng.random(30) * 50])
    blob = rng.random((30, 2)) * 200
    assert compare.degenerate(axis) and compare.degenerate(blob[:2])
    assert not compare.degenerate(band) and not compare.degenerate(blob)


def test_comparison_checks_for_cancel() -> None:
    page = page_with_illustrations(8, [Placement(render_illustration(9))])
    items = _items(page, 0) * 3

    def cancel() -> None:
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        compare.compare(items, items, same=False, candidates=3, top_k=3, check=cancel)
