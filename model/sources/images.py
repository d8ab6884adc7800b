"""Decode untrusted image bytes: content checked by decoding, bombs and truncation refused."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError


class ImageDecodeError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Fully decode `data` into an RGB image, or raise ImageDecodeError."""
    return _decode(data, max_pixels, None)[0]


def decode_within(
    data: bytes, max_pixels: int, max_side: int
) -> tuple[Image.Image, tuple[int, int], float]:
    """Decode `data` shrunk to a longer side of at most `max_side`: the RGB image, the full
    image's size and the scale used (as `fit_within` gives them). A JPEG at least twice too big
    is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (in the DCT domain), several times
    less work than decoding every pixel and then resizing; every byte is still read, so a
    truncated file is refused all the same."""
    image, full = _decode(data, max_pixels, max_side)
    size, scale = fitted_size(full, max_side)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return image, full, scale


def _decode(
    data: bytes, max_pixels: int, draft_side: int | None
) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded RGB image and the full size; with `draft_side`, a JPEG may come back smaller
    (never smaller than fitting it within `draft_side` would make it)."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between max_pixels and 2x; treat any excess as an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = max_pixels
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        "too_many_pixels", f"image has {width}x{height} pixels, over the limit"
                    )
                target, scale = fitted_size((width, height), draft_side)
                if scale < 1.0 and img.format == "JPEG":
                    img.draft(img.mode, target)
                img.load()  # decodes every byte: a truncated file fails here
                return img.convert("RGB"), (width, height)
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


def sniff_image(data: bytes) -> str | None:
    """Format of an image header (cheap check for uploads), or None when it is no image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
            return img.format
    except Exception:  # noqa: BLE001 - PIL raises many types for garbage input
        return None


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
