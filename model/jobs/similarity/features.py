"""What the similarity job keeps of each page or detected region ("item"), computed once per
image and cached: a global descriptor for shortlisting, SIFT keypoints for geometric
verification, and a small grey thumbnail for the photometric check.

The global descriptor joins two halves of equal weight: the pluggable feature extractor's
pooled features (translation-invariant, learnt) and a layout descriptor — the item's 16 x 16
grey thumbnail, contrast-normalised — which a re-drawn copy keeps almost unchanged after its box
is resized to a square, however it was scaled. Both are unit vectors, so the cosine of the
joined descriptor is the mean of the two cosines.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from model.jobs.similarity.local import LocalFeatures, extract

LAYOUT_SIDE = 16
REGION_SIDE = 256  # a region is analysed with its long side at this many pixels
REGION_FEATURES = 500
PAGE_FEATURES = 2000
# At page level keypoints smaller than about a letter (this fraction of the page's long side)
# are dropped: text would otherwise crowd out the pictures, and letters match letters anywhere.
PAGE_MIN_KEYPOINT = 0.008
THUMB_FACTOR = 0.5  # the photometric check runs at half the analysed size
PAD = 0.03  # a region is cropped with this much margin (detector boxes may be tight)


@dataclass
class ItemFeatures:
    """One comparable item: a whole page (region None) or a detected region of it."""

    page: int  # index of the page's unit (result item)
    region: int | None
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the decoded image's pixels
    scale: float  # analysed pixels per decoded pixel
    embedding: np.ndarray  # unit vector from the feature extractor
    layout: np.ndarray  # unit vector, LAYOUT_SIDE**2
    local: LocalFeatures  # keypoints in analysed pixels
    thumb: np.ndarray  # grey uint8, analysed size x THUMB_FACTOR

    def to_decoded(self, points: np.ndarray) -> np.ndarray:
        """Analysed-pixel positions back to decoded-image pixels."""
        return points / self.scale + np.array(self.box[:2], dtype=np.float32)


def grey(image: Image.Image) -> np.ndarray:
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)


def normalise_contrast(gray: np.ndarray) -> np.ndarray:
    """Blur away scanner grain, then equalise locally (CLAHE): faint plates and washed-out
    copies get keypoints, and paper tint or exposure matter less."""
    blurred = cv2.GaussianBlur(gray, (0, 0), 1.0)
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(blurred)


def layout_descriptor(gray: np.ndarray) -> np.ndarray:
    small = cv2.resize(gray, (LAYOUT_SIDE, LAYOUT_SIDE), interpolation=cv2.INTER_AREA)
    vec = small.astype(np.float32).ravel()
    vec -= vec.mean()
    return vec / (np.linalg.norm(vec) + 1e-6)


def _resize_long_side(gray: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    height, width = gray.shape[:2]
    scale = side / max(width, height)
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    method = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(gray, size, interpolation=method), scale


def crop_box(
    size: tuple[int, int], xyxy: list[float] | tuple[float, ...]
) -> tuple[float, float, float, float]:
    """The region's box with a small margin, inside the image."""
    width, height = size
    x1, y1, x2, y2 = xyxy
    mx, my = (x2 - x1) * PAD, (y2 - y1) * PAD
    return (max(0.0, x1 - mx), max(0.0, y1 - my), min(width, x2 + mx), min(height, y2 + my))


def describe(
    page: int,
    region: int | None,
    gray: np.ndarray,
    box: tuple[float, float, float, float],
    decoded_scale: float,
    side: int,
    n_features: int,
    min_keypoint: float = 0.0,
) -> tuple[ItemFeatures, np.ndarray]:
    """Features of a grey image (the page, or a region cropped from it) analysed at `side`
    pixels on its long side; `decoded_scale` is gray pixels per decoded pixel. Returns the
    item (embedding still empty) and the contrast-normalised image for the extractor."""
    analysed, scale = _resize_long_side(gray, side)
    prepared = normalise_contrast(analysed)
    thumb = cv2.resize(
        prepared,
        (
            max(4, round(prepared.shape[1] * THUMB_FACTOR)),
            max(4, round(prepared.shape[0] * THUMB_FACTOR)),
        ),
        interpolation=cv2.INTER_AREA,
    )
    item = ItemFeatures(
        page=page,
        region=region,
        box=box,
        scale=scale * decoded_scale,
        embedding=np.zeros(0, np.float32),
        layout=layout_descriptor(prepared),
        local=extract(prepared, n_features, min_keypoint * max(prepared.shape)),
        thumb=thumb,
    )
    return item, prepared


def page_items(
    page: int,
    image: Image.Image,
    image_scale: float,
    regions: list[list[float]] | None,
    page_side: int,
) -> tuple[list[ItemFeatures], list[Image.Image]]:
    """Items of one page: the page itself (regions None) or one per detected region (boxes in
    decoded pixels). `image` is the page as analysed, `image_scale` its pixels per decoded
    pixel. Also returns what the feature extractor should see of each item (RGB crops)."""
    gray = grey(image)
    decoded_size = (image.width / image_scale, image.height / image_scale)
    if regions is None:
        box = (0.0, 0.0, *decoded_size)
        page_side = min(page_side, max(image.size))  # never upsample a whole page
        item, _ = describe(
            page, None, gray, box, image_scale, page_side, PAGE_FEATURES, PAGE_MIN_KEYPOINT
        )
        return [item], [image]
    items, crops = [], []
    for number, xyxy in enumerate(regions):
        box = crop_box((round(decoded_size[0]), round(decoded_size[1])), xyxy)
        px = [round(v * image_scale) for v in box]
        if px[2] - px[0] < 8 or px[3] - px[1] < 8:
            continue  # a sliver: nothing to compare
        crop = image.crop(px)
        item, _ = describe(page, number, grey(crop), box, image_scale, REGION_SIDE, REGION_FEATURES)
        items.append(item)
        crops.append(crop)
    return items, crops


# --- serialisation (the feature cache) ---------------------------------------------------------


def pack(items: list[ItemFeatures]) -> str:
    """Items as one base64 string (npz): descriptors quantised to bytes (RootSIFT values lie in
    [0, 1]), global vectors as float16. About 100 KB per region, 250 KB per page."""
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for n, item in enumerate(items):
        arrays[f"p{n}"] = item.local.points.astype(np.float32)
        arrays[f"d{n}"] = np.round(item.local.descriptors * 255).astype(np.uint8)
        arrays[f"e{n}"] = item.embedding.astype(np.float16)
        arrays[f"l{n}"] = item.layout.astype(np.float16)
        arrays[f"t{n}"] = item.thumb
        meta.append([item.region, list(item.box), item.scale, list(item.local.size)])
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def unpack(data: str, page: int) -> list[ItemFeatures]:
    """The items `pack` stored, now belonging to result item `page`."""
    with np.load(io.BytesIO(base64.b64decode(data)), allow_pickle=False) as arrays:
        meta = json.loads(arrays["meta"].tobytes().decode())
        items = []
        for n, (region, box, scale, size) in enumerate(meta):
            descriptors = arrays[f"d{n}"].astype(np.float32) / 255.0
            local = LocalFeatures(
                arrays[f"p{n}"],
                _unit(descriptors) if len(descriptors) else descriptors,
                tuple(size),
            )
            items.append(
                ItemFeatures(
                    page=page,
                    region=region,
                    box=tuple(box),
                    scale=float(scale),
                    embedding=_unit(arrays[f"e{n}"]),
                    layout=_unit(arrays[f"l{n}"]),
                    local=local,
                    thumb=arrays[f"t{n}"],
                )
            )
    return items
