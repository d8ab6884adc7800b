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
                img.load()  # decodes every byte: a truncated file fails here
                return img.convert("RGB")
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


def fit_within(img: Image.Image, max_side: int | None) -> tuple[Image.Image, float]:
    """Downscale so the longer side is at most max_side; returns the image and the scale used."""
    longest = max(img.size)
    if not max_side or longest <= max_side:
        return img, 1.0
    scale = max_side / longest
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BILINEAR), scale
