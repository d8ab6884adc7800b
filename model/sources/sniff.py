"""What kind of image a file is, from its first bytes: the API's check of uploads (415 for
anything else). No decoder: the HTTP process stays free of PIL; the worker decodes, and a file
that starts like an image but does not decode fails as that page (`corrupt_image`)."""

from __future__ import annotations

# (magic prefix, offset, format name as PIL spells it)
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"BM", 0, "BMP"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "JPEG2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG2000"),
)


def sniff_image(data: bytes) -> str | None:
    """Format of an image by its signature, or None when it is no image we read."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, offset, name in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    return None
