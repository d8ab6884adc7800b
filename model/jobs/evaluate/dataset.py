"""A YOLO dataset zip as evaluate's ground truth, read by model/jobs/yolo_zip.py (as train reads
it): images, each with a label .txt of the same stem, lines `class cx cy w h` normalised to the
image. Class names come from the zip (data.yaml `names`, classes.txt), else the model's own, by
index. An image without a label file has no illustration (YOLO's convention).

Worker only (PIL). Sizes are checked before anything is decompressed: file count, each
member's bytes, each image's pixels (Image.open reads the header only until load). With
`analyse_side`, a page is decoded as detect decodes an uploaded image (`decode_within`: shrunk
once, JPEGs at reduced scale, within the process's decode budget), so the model sees the pixels
it would see in a detect task; boxes stay in the full image's pixels and `scale` maps
detections back.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from model.jobs.evaluate.groundtruth import TruthBox
from model.jobs.yolo_zip import PageProblem, YoloZip
from model.pipeline.memory import process_budget
from model.sources.images import ImageDecodeError, decode_within


@dataclass
class DatasetPage:
    name: str
    image: Any = None  # PIL image (RGB)
    size: tuple[int, int] = (0, 0)  # the full image's
    scale: float = 1.0  # decoded image / full image
    boxes: list[TruthBox] = field(default_factory=list)
    error: tuple[str, str] | None = None


class Dataset:
    """The zip's pages (model/jobs/yolo_zip.py), each decoded only when loaded (a batch at a
    time)."""

    def __init__(
        self,
        data: bytes,
        model_classes: list[str],
        max_images: int,
        max_pixels: int,
        analyse_side: int | None = None,
    ) -> None:
        self.zip = YoloZip(data, max_images)  # the reader train uses too
        self.names = self.zip.class_names() or model_classes
        self.max_pixels = max_pixels
        self.analyse_side = analyse_side
        self.pages = [DatasetPage(name) for name in self.zip.images]
        self.labels = self.zip.labels

    def load(self, page: DatasetPage) -> None:
        """Decode the page's image and read its boxes, or set its error."""
        try:
            data = self.zip.read(page.name)
            if self.analyse_side:
                page.image, page.size, page.scale = decode_within(
                    data, self.max_pixels, self.analyse_side, process_budget(), reduce=True
                )
            else:
                image = Image.open(io.BytesIO(data))
                if image.width * image.height > self.max_pixels:
                    raise ValueError(("too_many_pixels", f"{image.width}x{image.height}"))
                page.image = image.convert("RGB")
                page.size = page.image.size
            boxes = self.zip.boxes(page.name, self.names, page.size) or []
            page.boxes = [TruthBox(page.name, label, box) for label, box in boxes]
        except PageProblem as exc:
            page.error, page.image = (exc.code, exc.message), None
        except ValueError as exc:
            reason = exc.args[0] if exc.args and isinstance(exc.args[0], tuple) else None
            page.error, page.image = reason or ("undecodable", str(exc)), None
        except ImageDecodeError as exc:
            page.error, page.image = (exc.code, exc.message), None
        except (OSError, Image.DecompressionBombError, zipfile.BadZipFile) as exc:
            page.error, page.image = ("undecodable", f"{type(exc).__name__}: {exc}"), None
