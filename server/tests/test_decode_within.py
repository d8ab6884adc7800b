"""decode_within: a page shrunk to the model's input while decoding (JPEG DCT scaling), with the
same size, scale and refusals as decoding it whole and shrinking it with fit_within."""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable

import pytest
from PIL import Image

from model.settings import Settings
from model.sources.images import ImageDecodeError, decode_image, decode_within, fit_within
from synthetic import render_page
from testkit.files import encoded


@pytest.fixture(scope="module")
def page() -> Image.Image:
    return render_page(930_001, 1700, 2100).image


@pytest.fixture(scope="module")
def page_as(page: Image.Image) -> Callable[[str], bytes]:
    """The page encoded in a format, once for the module (a PNG this size takes seconds)."""
    return functools.cache(lambda fmt: encoded(page, fmt))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("side", [416, 832, 1500, 4000])
def test_same_size_and_scale_as_fit_within(
    page: Image.Image, page_as: Callable[[str], bytes], fmt: str, side: int
) -> None:
    data = page_as(fmt)
    image, full, scale = decode_within(data, 10**8, side)
    expected, expected_scale = fit_within(decode_image(data, 10**8), side)
    assert full == page.size
    assert image.size == expected.size and image.mode == "RGB"
    assert scale == expected_scale


def test_pixels_close_to_decode_then_shrink(page_as: Callable[[str], bytes]) -> None:
    data = page_as("JPEG")
    fast, _, _ = decode_within(data, 10**8, 416)
    slow, _ = fit_within(decode_image(data, 10**8), 416)
    diff = [abs(a - b) for a, b in zip(fast.tobytes(), slow.tobytes(), strict=True)]
    assert sum(diff) / len(diff) < 8  # mean difference of 8-bit channel values


def test_truncated_and_oversized_jpegs_are_still_refused(page_as: Callable[[str], bytes]) -> None:
    data = page_as("JPEG")
    with pytest.raises(ImageDecodeError) as truncated:
        decode_within(data[: len(data) // 2], 10**8, 416)
    assert truncated.value.code == "corrupt_image"
    with pytest.raises(ImageDecodeError) as bomb:
        decode_within(data, 1_000_000, 416)
    assert bomb.value.code == "too_many_pixels"


def test_a_refused_image_leaves_pil_s_process_wide_limit_alone(
    page_as: Callable[[str], bytes],
) -> None:
    # The fetch's limit is its own: set as PIL's global, it refused images that other code in
    # the worker opens (a 2.7-megapixel diagram in the vectorize tests, after a 2-megapixel fetch).
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageDecodeError):
        decode_within(page_as("JPEG"), 1_000, 416)
    assert before == Image.MAX_IMAGE_PIXELS


def _png_header(width: int, height: int) -> bytes:
    """A PNG's signature, IHDR and an empty IDAT: its size is read, no pixel is there."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"")


def test_the_configured_pixel_limit_is_the_one_that_counts() -> None:
    # 100 megapixels: over PIL's own default (89.5 M, where it only warns) and under the
    # configured default (179 M). Such a scan is let through to decoding (which fails here, on
    # a header with nothing after it), not refused as too many pixels.
    limit = Settings().fetch.max_pixels
    with pytest.raises(ImageDecodeError) as headed:
        decode_within(_png_header(10_000, 10_000), limit, 416)
    assert headed.value.code == "corrupt_image", headed.value
    with pytest.raises(ImageDecodeError) as over:
        decode_within(_png_header(10_000, 10_000), 99_999_999, 416)
    assert over.value.code == "too_many_pixels"
