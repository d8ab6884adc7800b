"""The page pipeline's seam (model/jobs/pages.py): every job reads pages through `open_pages`,
and the provenance block it writes survives a cancel.

No stack: the jobs run against a context that keeps what they write, with a fetcher that serves
one PNG for any URL (the remote hosts are not ours). Detect's model is a stand-in that finds
nothing; vectorize's analysis is the real one.
"""

from __future__ import annotations

import ast
import copy
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image, ImageDraw

from model.jobs import JobCancelled
from model.jobs.contract import ImageUrl, TaskSpec
from model.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "model" / "jobs"

# What only the pipeline may build: a job that calls one of these wires pages on its own.
PIPELINE_PARTS = {
    "PageLoader",
    "page_batches",
    "FetchScope",
    "scoped",
    "plan_units",
    "ServiceInfo",
    "InfoCache",
}
# The modules that read pages; each opens them with open_pages.
READERS = {
    "model/jobs/detect_run.py",
    "model/jobs/similarity/job.py",
    "model/jobs/vectorize/run.py",
    "model/jobs/evaluate/run.py",
    "model/jobs/train/iiif.py",
    "model/jobs/cluster/job.py",
}


def _called(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                names.add(func.id)
            elif isinstance(func, ast.Attribute):
                names.add(func.attr)
    return names


def test_every_job_reads_pages_through_open_pages() -> None:
    wiring, openers = {}, set()
    for path in sorted(JOBS.rglob("*.py")):
        name = str(path.relative_to(ROOT))
        if name == "model/jobs/pages.py":
            continue
        called = _called(path)
        if called & PIPELINE_PARTS:
            wiring[name] = sorted(called & PIPELINE_PARTS)
        if "open_pages" in called:
            openers.add(name)
    assert not wiring, f"build these through model/jobs/pages.py (open_pages): {wiring}"
    assert openers == READERS


# --- the provenance block on a cancel -----------------------------------------------------------


def _png() -> bytes:
    image = Image.new("RGB", (96, 64), "white")
    ImageDraw.Draw(image).line((8, 8, 88, 56), fill="black", width=3)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


PNG = _png()


class _Fetcher:
    def __init__(self) -> None:
        self.scopes: list[Any] = []

    def scoped(self, scope: Any) -> _Fetcher:
        self.scopes.append(scope)
        return self

    def get(self, url: str, max_bytes: int | None = None) -> Any:
        return SimpleNamespace(content=PNG)


class _Detector:
    name = "stand-in"
    imgsz = 64
    info = SimpleNamespace(sha256="0" * 64, classes=["illustration"])

    def predict(self, images: list[Any], confidence: float, iou: float) -> list[list[Any]]:
        return [[] for _ in images]


class _Context:
    """Keeps what the job writes; the task is cancelled once `cancel_after` items are stored."""

    def __init__(self, spec: TaskSpec, cancel_after: int) -> None:
        self.task_id = "t" * 32
        self.record = None
        self.spec = spec
        self.meter = None
        self.fetcher = _Fetcher()
        self.resources = SimpleNamespace(
            settings=Settings(),
            redis=None,  # no analysis caches: every page is decoded
            fetcher=self.fetcher,
            uploads=None,
            detectors={_Detector.name: _Detector()},
            default_model=_Detector.name,
            versions={},
            provenance=lambda detector: {"model": detector.name},
        )
        self.cancel_after = cancel_after
        self.items: list[Any] = []
        self.provenance: dict[str, Any] = {}

    def check_cancel(self) -> None:
        if len(self.items) >= self.cancel_after:
            raise JobCancelled()

    def finished_indices(self) -> set[int]:
        return set()

    def failed_count(self) -> int:
        return 0

    def emit(self, item: Any, failed: bool = False) -> None:
        self.items.append(item)

    def set_provenance(self, provenance: dict[str, Any]) -> None:
        self.provenance = copy.deepcopy(provenance)

    def set_summary(self, summary: dict[str, Any]) -> None:
        pass

    def set_total(self, total: int) -> None:
        pass

    def keep_manifest(self, index: int, document: str) -> None:
        pass


def _run_detect(ctx: _Context) -> None:
    from model.jobs.detect_run import run_detect

    run_detect(ctx)  # type: ignore[arg-type]


def _run_vectorize(ctx: _Context) -> None:
    from model.jobs.vectorize.run import run_vectorize

    run_vectorize(ctx)  # type: ignore[arg-type]


@pytest.mark.parametrize("run", [_run_detect, _run_vectorize], ids=["detect", "vectorize"])
def test_a_cancelled_task_keeps_the_pipelines_provenance_block(run: Any) -> None:
    pages = 12
    urls = [ImageUrl(url=f"https://images.example.org/p{i}.png") for i in range(pages)]
    ctx = _Context(TaskSpec(inputs=urls), cancel_after=1)
    with pytest.raises(JobCancelled):
        run(ctx)
    assert 1 <= len(ctx.items) < pages  # cancelled part-way
    block = ctx.provenance
    loaded = block["cache"]["hits"] + block["cache"]["misses"]
    assert block["cache"] == {"hits": 0, "misses": loaded} and loaded >= len(ctx.items)
    assert block["bytes_fetched"] == loaded * len(PNG)
    assert block["pages_failed"] == 0 and block["resumed_after"] == 0
    assert block["manifests"] == [] and block["manifest_problems"] == []
    assert block["pipeline"]["batch_size"] == Settings().worker.batch_size
    assert {"fetch_s", "decode_s", "wall_s"} <= set(block["timings"])
    # Leaving the pipeline cancelled the task's fetch scope (downloads in flight end).
    assert [scope.cancelled for scope in ctx.fetcher.scopes] == [True]
