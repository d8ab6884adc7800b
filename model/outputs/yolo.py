"""YOLO label files in a zip, one per analysed image, plus extractorAPI-style annotation files.

- `labels/<index>_<name>.txt`: one line per detection, `class cx cy w h confidence`, normalised
  to the image (for a canvas: to the canvas, which the boxes are expressed in) — what
  `yolo predict save_txt=True save_conf=True` writes;
- `classes.txt`: class names, one per line, in class-index order;
- `annotations/<manifest or images>.txt`: extractorAPI's format — for each page a line
  `<page number> <image name>` followed by one `x y w h` line (pixels) per detection.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any
from urllib.parse import urlsplit


def _stem(item: dict[str, Any]) -> str:
    source = item.get("canvas_id") or item.get("source") or ""
    path = urlsplit(source).path if "://" in source else source
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.strip("/").replace("/", "_"))[-80:]
    return f"{item['index']:05d}_{name or 'image'}".rstrip("._")


def _size(item: dict[str, Any]) -> tuple[int, int]:
    if item.get("coordinates") == "canvas":
        return item.get("canvas_width") or 0, item.get("canvas_height") or 0
    return item.get("width") or 0, item.get("height") or 0


def yolo_lines(item: dict[str, Any], classes: list[str]) -> list[str]:
    width, height = _size(item)
    if not width or not height:
        return []
    lines = []
    for detection in item.get("detections", []):
        x, y, w, h = detection["xywh"]
        label = detection["label"]
        cls = classes.index(label) if label in classes else len(classes)
        cx, cy = (x + w / 2) / width, (y + h / 2) / height
        values = (cx, cy, w / width, h / height, detection["confidence"])
        lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in values))
    return lines


def yolo_archive(
    items: list[dict[str, Any]], classes: list[str], manifests: list[dict[str, Any]]
) -> bytes:
    ordered = [i for i in sorted(items, key=lambda i: i["index"]) if i.get("status") == "ok"]
    classes = list(classes) + sorted(
        {d["label"] for i in ordered for d in i.get("detections", [])} - set(classes)
    )
    names = {
        m["index"]: re.sub(r"[^A-Za-z0-9_.-]+", "_", m.get("label") or "")[:60] for m in manifests
    }
    groups: dict[str, list[str]] = {}
    pages: dict[str, int] = {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("classes.txt", "".join(f"{c}\n" for c in classes))
        for item in ordered:
            stem = _stem(item)
            labels = "".join(f"{line}\n" for line in yolo_lines(item, classes))
            archive.writestr(f"labels/{stem}.txt", labels)
            manifest = item.get("manifest")
            group = (
                "images" if manifest is None else f"manifest{manifest}_{names.get(manifest, '')}"
            )
            group = group.rstrip("_")
            pages[group] = pages.get(group, 0) + 1
            lines = groups.setdefault(group, [])
            lines.append(f"{pages[group]} {stem}.jpg")
            lines.extend(" ".join(str(v) for v in d["xywh"]) for d in item.get("detections", []))
        for group, lines in groups.items():
            archive.writestr(f"annotations/{group}.txt", "".join(f"{ln}\n" for ln in lines))
    return buffer.getvalue()
