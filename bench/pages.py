"""Synthetic book pages at 3000–4000 px laid out as a static IIIF Image API 3.0 tree.

Each page is rendered once by `synthetic.render_page` and kept on disk (a cache under
bench/results/tmp/, git-ignored), so later runs start at once. The layout is what a static
level-0 server offers: the full image (`full/max`) and a few pre-rendered sizes (`full/w,h`,
halvings like the `iiif` package's static generator lists), no tiles — serving them costs the
image server no CPU. `info.json` is written per run, because it names the server's URL.

For the level-2 host, the one `w,` size the worker computes from a manifest that declares
level 2 is rendered ahead too (`ensure_computed`): the host then answers it from disk as a level-2
server would answer it after resizing, without taking CPU from the worker being measured.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from iiif.info import IIIFInfo
from PIL import Image

from model.iiif.image_api import ImageService, choose_request
from model.jobs.detect import MAX_SIDE_FACTOR
from synthetic import render_page

# Bump when the rendering or layout below changes: old cache entries are then ignored.
LAYOUT_VERSION = 1
SEED_BASE = 700_000  # far from the training (0..) and test (900_000..) seeds
JPEG_QUALITY = 85
SIZE_FACTORS = (2, 4, 8)  # listed sizes: 1/2, 1/4, 1/8 of the full image


@dataclass(frozen=True)
class Page:
    identifier: str
    width: int
    height: int
    sizes: tuple[tuple[int, int], ...]
    full_bytes: int

    def service_path(self) -> str:
        return f"iiif/{self.identifier}"

    def full_path(self) -> str:
        return f"{self.service_path()}/full/max/0/default.jpg"

    def size_path(self, width: int, height: int) -> str:
        return f"{self.service_path()}/full/{width},{height}/0/default.jpg"

    def width_path(self, width: int) -> str:
        return f"{self.service_path()}/full/{width},/0/default.jpg"


def worker_sides(imgsz: int) -> tuple[int, int]:
    """The `max_side` and `min_side` a detect task asks IIIF services for (model/jobs/
    detect_run.py, without a max_side parameter)."""
    max_side = imgsz * MAX_SIDE_FACTOR
    return max_side, min(max_side, imgsz)


def computed_size(page: Page, imgsz: int) -> tuple[int, int]:
    """The `w,` request (and the height the server answers) the worker computes for `page`
    from a manifest declaring level 2 and the canvas size: the worker's own choose_request."""
    service = ImageService("x", 3, 2, page.width, page.height, level_declared=True)
    request = choose_request(service, *worker_sides(imgsz), method="computed")
    assert (
        request.width
        and request.height
        and request.url.endswith(f"/{request.width},/0/default.jpg")
    )
    return request.width, request.height


def page_size(seed: int) -> tuple[int, int]:
    """A portrait page 3000–3400 px wide and 3400–4000 px high (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    return 3000 + int(rng.integers(0, 401)), 3400 + int(rng.integers(0, 601))


def _scaled(width: int, height: int, factor: int) -> tuple[int, int]:
    # Rounded like iiif.static's static_full_sizes, so listed sizes match the files exactly.
    return int(width / factor + 0.5), int(height / factor + 0.5)


def _render_one(root: str, index: int) -> Page:
    identifier = f"p{index:03d}"
    base = Path(root) / "iiif" / identifier
    meta = base / "page.json"
    if meta.exists():
        data = json.loads(meta.read_text())
        return Page(**{**data, "sizes": tuple(tuple(s) for s in data["sizes"])})
    seed = SEED_BASE + index
    width, height = page_size(seed)
    image = render_page(seed, width, height).image
    page = Page(
        identifier, width, height, tuple(_scaled(width, height, f) for f in SIZE_FACTORS), 0
    )
    full = Path(root) / page.full_path()
    full.parent.mkdir(parents=True, exist_ok=True)
    image.save(full, format="JPEG", quality=JPEG_QUALITY)
    for w, h in page.sizes:
        target = Path(root) / page.size_path(w, h)
        target.parent.mkdir(parents=True, exist_ok=True)
        image.resize((w, h), Image.Resampling.LANCZOS).save(
            target, format="JPEG", quality=JPEG_QUALITY
        )
    page = Page(identifier, width, height, page.sizes, full.stat().st_size)
    meta.write_text(json.dumps(asdict(page)))  # written last: marks the page complete
    return page


def ensure_pages(root: Path, count: int, processes: int) -> list[Page]:
    """Pages 0..count-1 under root/v<LAYOUT_VERSION>, rendering the missing ones in parallel."""
    tree = root / f"v{LAYOUT_VERSION}"
    tree.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=max(1, processes)) as pool:
        return list(pool.map(_render_one, [str(tree)] * count, range(count)))


def _render_computed(root: str, page: Page, size: tuple[int, int]) -> None:
    target = Path(root) / page.width_path(size[0])
    if target.exists():
        return
    # From the smallest listed size still larger than the answer: the same pixels as from the
    # full image, a fraction of the decoding.
    source = min((s for s in page.sizes if s[0] >= size[0]), default=(page.width, page.height))
    path = page.size_path(*source) if source in page.sizes else page.full_path()
    with Image.open(Path(root) / path) as image:
        scaled = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    scaled.save(partial, format="JPEG", quality=JPEG_QUALITY)
    partial.rename(target)  # whole or absent: an interrupted run leaves no broken file


def ensure_computed(root: Path, pages: list[Page], imgsz: int, processes: int) -> None:
    """Each page's computed `w,` answer on disk (see the module's docstring)."""
    tree = tree_root(root)
    sizes = [computed_size(page, imgsz) for page in pages]
    with ProcessPoolExecutor(max_workers=max(1, processes)) as pool:
        list(pool.map(_render_computed, [str(tree)] * len(pages), pages, sizes))


def tree_root(root: Path) -> Path:
    return root / f"v{LAYOUT_VERSION}"


def write_info(tree: Path, page: Page, base_url: str) -> None:
    """The page's info.json (level 0, listed sizes), made by the `iiif` reference package."""
    info = IIIFInfo(
        level=0,
        server_and_prefix=f"{base_url}/iiif",
        identifier=page.identifier,
        width=page.width,
        height=page.height,
        sizes=[{"width": w, "height": h} for w, h in page.sizes],
        formats=["jpg"],
        qualities=["default"],
        api_version="3.0",
    )
    (tree / page.service_path() / "info.json").write_text(info.as_json())
