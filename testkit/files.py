"""Bytes of the files tests send: an image encoded in a format, a zip of named files."""

from __future__ import annotations

import io
import zipfile

from PIL import Image


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    """`image` saved as `fmt` (JPEG, PNG...) with Pillow's save options."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def zipped(files: dict[str, bytes | str]) -> bytes:
    """A zip holding these files (name -> contents)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()
