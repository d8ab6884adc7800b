"""decode_within: a page shrunk to the model's input while decoding (JPEG DCT scaling), with the
same size, scale and refusals as decoding it whole and shrinking it with fit_within."""

from __future__ import annotations

import pytest
from PIL import Image

from model.sources.images import ImageDecodeError, decode_image, decode_within, fit_within
from synthetic import render_page
from testkit.files import encoded


@pytest.fixture(scope="module")
def page() -> Image.Image:
    return render_page(930_001, 1700, 2100).image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("side", [416, 832, 1500, 4000])
def test_same_size_and_scale_as_fit_within(page: Image.Image, fmt: str, side: int) -> None:
    data = encoded(page, fmt)
    image, full, scale = decode_within(data, 10**8, side)
    expected, expected_scale = fit_within(decode_image(data, 10**8), side)
    assert full == page.size
    assert image.size == expected.size and image.mode == "RGB"
    assert scale == expected_scale


def test_pixels_close_to_decode_then_shrink(page: Image.Image) -> None:
    data = encoded(page, "JPEG")
    fast, _, _ = decode_within(data, 10**8, 416)
    slow, _ = fit_within(decode_image(data, 10**8), 416)
    diff = [abs(a - b) for a, b in zip(fast.tobytes(), slow.tobytes(), strict=True)]
    assert sum(diff) / len(diff) < 8  # mean difference of 8-bit channel values


def test_truncated_and_oversized_jpegs_are_still_refused(page: Image.Image) -> None:
    data = encoded(page, "JPEG")
    with pytest.raises(ImageDecodeError) as truncated:
        decode_within(data[: len(data) // 2], 10**8, 416)
    assert truncated.value.code == "corrupt_image"
    with pytest.raises(ImageDecodeError) as bomb:
        decode_within(data, 1_000_000, 416)
    assert bomb.value.code == "too_many_pixels"
