"""The vectorize job's pure parts: the scorer's tolerances and one-to-one matching, the method on
clean drawings, the params' refusals, the coordinate maps, and the SVG it writes."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from model.jobs.vectorize import VectorizeParams
from model.jobs.vectorize.geometry import Thresholds, vectorize
from model.jobs.vectorize.score import score_image, total
from model.jobs.vectorize.transform import Affine, transformed
from model.outputs.vector import bbox, path_data, selector_svg, svg_archive, svg_document

SVG = "{http://www.w3.org/2000/svg}"


def _line(p0, p1):
    return {"kind": "line", "p0": list(p0), "p1": list(p1)}


def _arc(c, r, a0, a1):
    return {"kind": "arc", "center": list(c), "radius": r, "start_deg": a0, "end_deg": a1}


def test_lines_match_in_either_order_within_one_percent_of_the_diagonal() -> None:
    true = [_line((0, 0), (600, 800))]  # diagonal 1000: 10 px
    assert score_image([_line((606, 806), (8, 0))], true, 600, 800)["line"].matched == 1
    assert score_image([_line((600, 812), (0, 0))], true, 600, 800)["line"].matched == 0


def test_matching_is_one_to_one() -> None:
    true = [_line((0, 0), (600, 800))]
    found = [_line((0, 0), (600, 800)), _line((1, 1), (600, 801))]
    counts = score_image(found, true, 600, 800)["line"]
    assert (counts.matched, counts.found, counts.true) == (1, 2, 1)
    assert counts.precision == 0.5 and counts.recall == 1.0


def test_circle_radius_tolerance_is_at_least_three_pixels() -> None:
    true = [{"kind": "circle", "center": [50, 50], "radius": 20}]
    near = [{"kind": "circle", "center": [50, 50], "radius": 22.9}]
    far = [{"kind": "circle", "center": [50, 50], "radius": 23.2}]
    assert score_image(near, true, 600, 800)["circle"].matched == 1
    assert score_image(far, true, 600, 800)["circle"].matched == 0


def test_arc_end_angles_within_ten_degrees_across_zero() -> None:
    true = [_arc((300, 300), 100, 355, 90)]
    assert score_image([_arc((300, 300), 100, 4, 99)], true, 600, 800)["arc"].matched == 1
    assert score_image([_arc((300, 300), 100, 355, 101)], true, 600, 800)["arc"].matched == 0


def test_totals_add_per_kind() -> None:
    one = score_image([_line((0, 0), (600, 800))], [_line((0, 0), (600, 800))], 600, 800)
    two = score_image([], [_line((0, 0), (600, 800))], 600, 800)
    line = total([one, two])["line"]
    assert (line.matched, line.found, line.true) == (1, 1, 2)
    assert line.f1 == pytest.approx(2 / 3)


def _drawing() -> np.ndarray:
    img = np.full((700, 900), 235, np.uint8)
    cv2.circle(img, (450, 350), 200, 40, 4, cv2.LINE_AA)
    cv2.line(img, (100, 650), (820, 80), 40, 4, cv2.LINE_AA)
    # the arc from 200 to 320 degrees (increasing angle, y down) of a circle of radius 120
    cv2.ellipse(img, (300, 300), (120, 120), 0, 200, 320, 40, 4, cv2.LINE_AA)
    return img


def test_the_method_finds_a_circle_a_line_and_an_arc() -> None:
    found = vectorize(_drawing(), Thresholds())
    true = [
        {"kind": "circle", "center": [450, 350], "radius": 200},
        _line((100, 650), (820, 80)),
        _arc((300, 300), 120, 200, 320),
    ]
    counts = score_image(found, true, 900, 700)
    assert {k: c.matched for k, c in counts.items()} == {"line": 1, "circle": 1, "arc": 1}
    assert {k: c.found for k, c in counts.items()} == {"line": 1, "circle": 1, "arc": 1}


def test_the_method_reports_only_the_kinds_asked() -> None:
    found = vectorize(_drawing(), Thresholds(), frozenset({"circle"}))
    assert [p["kind"] for p in found] == ["circle"]


def test_blank_paper_has_no_primitives() -> None:
    assert vectorize(np.full((300, 400), 230, np.uint8), Thresholds()) == []


@pytest.mark.parametrize("kinds", [[], ["line", "square"], "line"])
def test_primitives_must_be_a_non_empty_list_of_known_kinds(kinds) -> None:
    with pytest.raises(ValidationError):
        VectorizeParams(primitives=kinds)


def test_params_default_to_all_kinds_and_keep_their_order() -> None:
    assert VectorizeParams().primitives == ["line", "circle", "arc"]
    assert VectorizeParams(primitives=["arc", "line", "arc"]).primitives == ["line", "arc"]


def test_transform_scales_and_shifts_points_and_radii() -> None:
    moved = transformed(
        [{"kind": "arc", "center": [10, 20], "radius": 5, "start_deg": 370, "end_deg": 90}],
        Affine(2, 2, 100, 200),
    )
    assert moved == [
        {
            "kind": "arc",
            "center": [120, 240],
            "radius": 10,
            "start_deg": 10,
            "end_deg": 90,
            "confidence": 1.0,
        }
    ]


def _numbers(d: str) -> list[float]:
    return [
        float(v)
        for v in d.replace("M", " ").replace("L", " ").replace("A", " ").replace(",", " ").split()
    ]


def test_path_data_of_each_kind() -> None:
    assert path_data(_line((1, 2), (3.5, 4))) == "M1,2 L3.5,4"
    circle = path_data({"kind": "circle", "center": [50, 60], "radius": 10})
    assert circle == "M40,60 A10,10 0 1 1 60,60 A10,10 0 1 1 40,60"
    # 0 -> 90 degrees, y down: from (r, 0) to (0, r), the short way, sweep-flag 1.
    arc = _numbers(path_data(_arc((0, 0), 10, 0, 90)))
    assert arc == [10, 0, 10, 10, 0, 0, 1, 0, 10]
    long = _numbers(path_data(_arc((0, 0), 10, 90, 0)))  # 270 degrees: the large arc
    assert long[5:7] == [1, 1] and long[7:] == pytest.approx([10, 0], abs=0.01)


def test_bbox_of_an_arc_covers_only_its_part() -> None:
    assert bbox(_arc((100, 100), 50, 0, 90)) == [100, 100, 50, 50]


def test_selector_is_one_path_in_an_unsized_svg() -> None:
    root = ET.fromstring(selector_svg({"kind": "circle", "center": [5, 5], "radius": 3}))
    assert root.tag == f"{SVG}svg" and "width" not in root.attrib
    assert [child.tag for child in root] == [f"{SVG}path"]
    assert "fill:none" in root[0].attrib["style"]


def test_svg_document_is_sized_to_the_canvas_and_holds_each_primitive() -> None:
    item = {
        "index": 0,
        "status": "ok",
        "width": 500,
        "height": 400,
        "canvas_width": 1000,
        "canvas_height": 800,
        "source": "a & b",
        "primitives": [
            _line((0, 0), (10, 10)),
            {"kind": "circle", "center": [50, 50], "radius": 5},
            _arc((50, 50), 20, 10, 100),
        ],
    }
    root = ET.fromstring(svg_document(item))
    assert (root.attrib["width"], root.attrib["height"]) == ("1000", "800")
    assert root.attrib["viewBox"] == "0 0 1000 800"
    assert [c.tag for c in root][1:] == [f"{SVG}line", f"{SVG}circle", f"{SVG}path"]
    assert math.isclose(float(root[2].attrib["r"]), 5)


def test_svg_archive_has_one_file_per_finished_item() -> None:
    import io
    import zipfile

    items = [
        {"index": 1, "status": "ok", "width": 10, "height": 10, "primitives": []},
        {"index": 0, "status": "failed", "primitives": []},
    ]
    names = zipfile.ZipFile(io.BytesIO(svg_archive(items))).namelist()
    assert names == ["00001.svg"]


def _canvas_item(**extra):
    return {
        "index": 3,
        "status": "ok",
        "manifest": 0,
        "canvas_index": 1,
        "canvas_id": "https://example.org/c/1",
        "primitives": [
            {**_line((10, 20), (30, 40)), "confidence": 0.9},
            {**_arc((100, 100), 50, 0, 90), "confidence": 1.0},
        ],
        **extra,
    }


def test_iiif_v3_page_has_an_svg_and_a_box_selector_per_primitive() -> None:
    from model.outputs.annotations import ResultLinks, annotation_page

    links = ResultLinks("https://api/result/t")
    page = annotation_page({"index": 0, "version": 3}, [_canvas_item()], links)
    line, arc = page["items"]
    assert line["id"].endswith("/canvas/1/annotations#primitive-3-0")
    assert line["target"]["source"] == "https://example.org/c/1"
    svg, box = line["target"]["selector"]
    assert svg["type"] == "SvgSelector" and "d='M10,20 L30,40'" in svg["value"]
    assert box == {
        "type": "FragmentSelector",
        "conformsTo": "http://www.w3.org/TR/media-frags/",
        "value": "xywh=10,20,20,20",
    }
    assert arc["target"]["selector"][1]["value"] == "xywh=100,100,50,50"
    assert [b["value"] for b in arc["body"]] == ["arc", "confidence 1.00"]


def test_iiif_v2_list_has_a_choice_of_selectors() -> None:
    from model.outputs.annotations import ResultLinks, annotation_page

    links = ResultLinks("https://api/result/t")
    page = annotation_page({"index": 0, "version": 2}, [_canvas_item()], links)
    on = page["resources"][0]["on"]
    assert on["full"] == "https://example.org/c/1"
    assert on["selector"]["item"]["@type"] == "oa:SvgSelector"
    assert on["selector"]["default"]["value"] == "xywh=10,20,20,20"


def test_the_params_defaults_are_the_methods_defaults() -> None:
    from dataclasses import asdict

    assert VectorizeParams().thresholds() == asdict(Thresholds())
