"""Decode untrusted image bytes: content checked by decoding, bombs and truncation refused.

Decoded memory is reserved before any pixel is decoded: the header gives the size and mode, so
what the decode will take is known (and a JPEG is decoded reduced first where it can be); the
reservation is given back once the full-size pixels are gone and only the shrunk image is left.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from PIL import Image, UnidentifiedImageError

from model.pipeline.memory import BudgetRefused, BudgetTimeout, ByteBudget

# Bytes a pixel takes in Pillow's memory by mode; every mode not named (RGB included) takes 4.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_RGB_PIXEL_BYTES = 4


class ImageDecodeError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Fully decode `data` into an RGB image, or raise ImageDecodeError. Not budgeted: the
    caller keeps the full-size image (the worker's pages go through `decode_within`)."""
    return decode_within(data, max_pixels, None, reduce=False)[0]


def decode_within(
    data: bytes,
    max_pixels: int,
    max_side: int | None,
    budget: ByteBudget | None = None,
    reduce: bool = True,
    stop: Callable[[], bool] | None = None,
) -> tuple[Image.Image, tuple[int, int], float]:
    """Decode `data` shrunk to a longer side of at most `max_side`: the RGB image, the full
    image's size and the scale used (as `fit_within` gives them). With `reduce`, a JPEG at least
    twice too big is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (in the DCT domain),
    several times less work and memory than decoding every pixel and then resizing; every byte
    is still read, so a truncated file is refused all the same. Without it, the pixels are
    those of `decode_image` + `fit_within`.

    With a `budget`, the bytes the decode takes are held in it from just before decoding until
    only the shrunk image is left: a decode needing more than the whole budget fails as
    `too_large_to_decode`, one that cannot get it in time (or is told to `stop`) as
    `decode_budget_timeout`."""
    with _decode_errors():
        img = _open(data, max_pixels)
        try:
            full = img.size
            size, scale = fitted_size(full, max_side)
            if reduce and scale < 1.0 and img.format == "JPEG":
                img.draft(img.mode, size)
            with _reserved(budget, decoded_bytes(img, full, size), stop):
                image = _shrunk_rgb(img, size)
        finally:
            img.close()
    return image, full, scale


def decoded_bytes(img: Image.Image, full: tuple[int, int], size: tuple[int, int]) -> int:
    """Bytes that decoding `img` (opened, not loaded; `full` its size before any draft) and
    shrinking it to `size` takes at most: its pixels, an RGB copy unless it is RGB already, the
    shrunk image, and for a progressive JPEG libjpeg's coefficients of the whole image."""
    pixels = img.size[0] * img.size[1]
    total = pixels * _PIXEL_BYTES.get(img.mode, 4)
    if img.mode != "RGB":
        total += pixels * _RGB_PIXEL_BYTES
    total += size[0] * size[1] * _RGB_PIXEL_BYTES
    if img.format == "JPEG" and img.info.get("progressive"):
        total += _jpeg_coefficient_bytes(img, full)
    return total


def _jpeg_coefficient_bytes(img: Image.Image, full: tuple[int, int]) -> int:
    """A progressive JPEG's coefficients are buffered whole, at full size whatever the draft
    scale: 64 two-byte values per 8x8 block of each component (subsampled ones have fewer)."""
    layers = getattr(img, "layer", None) or [("", 1, 1, 0)] * max(1, len(img.getbands()))
    h_max = max(h for _, h, _, _ in layers)
    v_max = max(v for _, _, v, _ in layers)
    blocks = sum(
        math.ceil(full[0] * h / h_max / 8) * math.ceil(full[1] * v / v_max / 8)
        for _, h, v, _ in layers
    )
    return blocks * 64 * 2


@contextmanager
def _decode_errors() -> Iterator[None]:
    """PIL's many exceptions as ImageDecodeError codes."""
    try:
        yield
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_many_pixels", str(exc)) from exc
    except (UnidentifiedImageError, ImportError) as exc:
        # ImportError: in the worker, ultralytics patches Image.open to retry unknown content
        # with an optional HEIF plugin, which raises ImportError when that plugin is absent.
        raise ImageDecodeError("not_an_image", "content is not a supported image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError("corrupt_image", f"image could not be decoded: {exc}") from exc


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The image's header read (nothing decoded yet), refused when it has too many pixels.

    The limit is checked here, not by setting PIL's process-wide `MAX_IMAGE_PIXELS`: that would
    impose this fetch's limit on every other image the process opens."""
    with warnings.catch_warnings():
        # PIL's own check (its default limit, which is half of `fetch.max_pixels`' default)
        # only warns below twice that limit: the limit that counts is checked just below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageDecodeError(
            "too_many_pixels", f"image has {width}x{height} pixels, over the limit"
        )
    return img


@contextmanager
def _reserved(
    budget: ByteBudget | None, needed: int, stop: Callable[[], bool] | None
) -> Iterator[None]:
    if budget is None:
        yield
        return
    try:
        budget.acquire(needed, stop=stop)
    except BudgetRefused as exc:
        raise ImageDecodeError(
            "too_large_to_decode",
            f"decoding needs {needed} bytes, more than the worker's decode budget "
            f"({budget.capacity} bytes, pipeline.decode_budget_bytes)",
        ) from exc
    except BudgetTimeout as exc:
        raise ImageDecodeError("decode_budget_timeout", str(exc)) from exc
    try:
        yield
    finally:
        budget.release(needed)


def _shrunk_rgb(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`img` decoded, as RGB, at `size`: always a new image. `img` is closed on the way out,
    so its full-size pixels are gone before the caller gives the budget back."""
    try:
        img.load()  # decodes every byte: a truncated file fails here
        # convert() would copy an RGB image whole: only convert what is not RGB already.
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        if rgb.size != size:
            return rgb.resize(size, Image.Resampling.BILINEAR)
        return rgb.copy() if rgb is img else rgb
    finally:
        img.close()


def fitted_size(size: tuple[int, int], max_side: int | None) -> tuple[tuple[int, int], float]:
    """The size `fit_within` shrinks an image of `size` to, and the scale."""
    width, height = size
    longest = max(size)
    if not max_side or longest <= max_side:
        return size, 1.0
    scale = max_side / longest
    return (max(1, round(width * scale)), max(1, round(height * scale))), scale


def fit_within(img: Image.Image, max_side: int | None) -> tuple[Image.Image, float]:
    """Downscale so the longer side is at most max_side; returns the image and the scale used."""
    size, scale = fitted_size(img.size, max_side)
    if scale == 1.0:
        return img, 1.0
    return img.resize(size, Image.Resampling.BILINEAR), scale
