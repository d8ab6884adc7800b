"""Synthetic documents with known copies for the similarity tests and the evaluation script:
illustrations drawn once and laid out on pages of several IIIF manifests — an original at its
drawn size, copies re-rendered at another scale and slight rotation on other paper with other
noise (synthetic/copies.py) — plus the ground truth and the metrics read off a result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthetic.copies import Placement, page_with_illustrations, render_illustration
from testkit.iiif_server import IiifServer, v3_canvas, v3_image, v3_manifest

KINDS = ("line", "diagram", "ornament", "engraving", "plate")
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Instance:
    document: str
    page: int  # position of the page in its document
    box: Box  # x, y, w, h on the canvas (= the image: canvases are image-sized)
    art: int


@dataclass
class Corpus:
    manifests: dict[str, str]  # document key -> manifest URL
    instances: list[Instance] = field(default_factory=list)
    canvas_ids: dict[tuple[str, int], str] = field(default_factory=dict)

    def copies_of(self, instance: Instance) -> list[Instance]:
        return [
            other for other in self.instances if other.art == instance.art and other != instance
        ]


def art_image(art: int, seed: int) -> Any:
    """Illustration number `art`: kinds in turn, a size of its own."""
    rng = np.random.default_rng(seed * 1000 + art)
    width, height = int(rng.integers(260, 400)), int(rng.integers(220, 360))
    return render_illustration(seed * 1000 + art, width, height, KINDS[art % len(KINDS)])


def build(
    server: IiifServer,
    name: str,
    layout: dict[str, list[list[tuple[int, bool]]]],
    seed: int = 7,
) -> Corpus:
    """`layout`: document -> pages -> (art number, is a copy) per illustration. An original is
    drawn at scale 1, upright; a copy at a random scale in 0.6-1.5 and rotation within 6 degrees.
    Every appearance of one art number is a copy of every other."""
    arts: dict[int, Any] = {}
    corpus = Corpus({})
    rng = np.random.default_rng(seed)
    for d, (doc, pages) in enumerate(layout.items()):
        canvases = []
        for p, entries in enumerate(pages):
            placements = []
            for art, is_copy in entries:
                image = arts.setdefault(art, art_image(art, seed))
                scale = float(rng.uniform(0.6, 1.5)) if is_copy else 1.0
                angle = float(rng.uniform(-6, 6)) if is_copy else 0.0
                placements.append(Placement(image, scale, angle))
            page = page_with_illustrations(seed * 100_000 + d * 1000 + p, placements)
            for (art, _), box in zip(entries, page.boxes, strict=True):
                corpus.instances.append(Instance(doc, p, box, art))
            published = server.publish(f"{name}-{doc}-{p}", page.image, 3)
            canvas_id = f"{server.url}/{name}/{doc}/canvas/{p}"
            corpus.canvas_ids[(doc, p)] = canvas_id
            canvases.append(
                v3_canvas(
                    canvas_id,
                    f"p. {p + 1}",
                    page.image.width,
                    page.image.height,
                    v3_image(published),
                )
            )
        manifest_id = f"{server.url}/{name}/{doc}/manifest.json"
        corpus.manifests[doc] = server.add_json(
            f"{name}/{doc}/manifest.json", v3_manifest(manifest_id, doc, canvases)
        )
    return corpus


# --- reading a result ---------------------------------------------------------------------------


def iou(a: list[int] | Box, b: list[int] | Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / max(1, aw * ah + bw * bh - inter)


def locate(corpus: Corpus, side: dict[str, Any]) -> tuple[str, int]:
    """(document, page position) of a match side."""
    for (doc, page), canvas_id in corpus.canvas_ids.items():
        if canvas_id == side["canvas_id"]:
            return doc, page
    raise AssertionError(f"unknown canvas {side['canvas_id']}")


def coverage(box: Box, region: list[int]) -> float:
    """How much of `region` lies inside `box`."""
    bx, by, bw, bh = box
    rx, ry, rw, rh = region
    iw = max(0, min(bx + bw, rx + rw) - max(bx, rx))
    ih = max(0, min(by + bh, ry + rh) - max(by, ry))
    return iw * ih / max(1, rw * rh)


def instance_of(corpus: Corpus, side: dict[str, Any]) -> Instance | None:
    """The illustration a region side shows — the one it mostly lies in (a detector may box
    part of a picture) — if any."""
    doc, page = locate(corpus, side)
    best = max(
        (i for i in corpus.instances if (i.document, i.page) == (doc, page)),
        key=lambda i: coverage(i.box, side["xywh"]),
        default=None,
    )
    return best if best is not None and coverage(best.box, side["xywh"]) >= 0.5 else None


@dataclass
class Report:
    precision_at_1: float
    hits: int
    queries: int
    min_copy: float  # lowest score of a true copy that ranked first
    best_distinct: float  # highest score of any pair that is not a copy
    details: list[str] = field(default_factory=list)
    copy_scores: list[float] = field(default_factory=list)

    @property
    def margin(self) -> float:
        return self.min_copy - self.best_distinct

    @property
    def above_distinct(self) -> int:
        """Copies (ranked first) scoring above every non-copy."""
        return sum(score > self.best_distinct for score in self.copy_scores)


def evaluate_regions(corpus: Corpus, pairs: list[dict[str, Any]]) -> Report:
    """Precision@1 over illustrations that have a copy: for each such illustration and each
    document holding a copy of it, is the best-scoring match of that illustration in that
    document pair a copy? Also the lowest copy score and the highest non-copy score."""
    by_docs = {tuple(p["documents"]): p for p in pairs}
    hits = queries = 0
    copy_scores, distinct = [], [0.0]
    details = []
    for pair in pairs:
        for m in pair["matches"]:
            a, b = instance_of(corpus, m["a"]), instance_of(corpus, m["b"])
            if a is None or b is None or a.art != b.art:
                distinct.append(m["score"])
    compared = {d for p in pairs for d in p["documents"]}
    for instance in corpus.instances:
        if instance.document not in compared:
            continue
        for doc in sorted({c.document for c in corpus.copies_of(instance)} & compared):
            queries += 1
            key = (instance.document, doc)
            pair = by_docs.get(key) or by_docs.get(key[::-1])
            best = None
            for m in pair["matches"] if pair else []:
                for mine, other in ((m["a"], m["b"]), (m["b"], m["a"])):
                    if other["document"] != doc or instance_of(corpus, mine) != instance:
                        continue
                    if best is None or m["score"] > best[0]:
                        best = (m["score"], instance_of(corpus, other))
            ok = best is not None and best[1] is not None and best[1].art == instance.art
            hits += ok
            if ok:
                copy_scores.append(best[0])  # type: ignore[index]
            details.append(
                f"art {instance.art} ({KINDS[instance.art % 5]}) {instance.document}:"
                f"{instance.page} -> {doc}: {'ok' if ok else 'MISS'} "
                f"{best[0] if best else None}"
            )
    return Report(
        hits / max(1, queries),
        hits,
        queries,
        min(copy_scores, default=0.0),
        max(distinct),
        details,
        copy_scores,
    )


def evaluate_pages(corpus: Corpus, pairs: list[dict[str, Any]]) -> Report:
    """The same at page level: a page holding an illustration with a copy in another document
    should have, as its best match there, a page holding a copy."""
    arts_on = {}
    for i in corpus.instances:
        arts_on.setdefault((i.document, i.page), set()).add(i.art)
    by_docs = {tuple(p["documents"]): p for p in pairs}
    hits = queries = 0
    copy_scores, distinct = [], [0.0]
    details = []
    for pair in pairs:
        for m in pair["matches"]:
            a, b = locate(corpus, m["a"]), locate(corpus, m["b"])
            if not arts_on.get(a, set()) & arts_on.get(b, set()):
                distinct.append(m["score"])
    compared = {d for p in pairs for d in p["documents"]}
    for (doc, page), arts in arts_on.items():
        if doc not in compared:
            continue
        targets = compared & {
            c.document
            for i in corpus.instances
            if (i.document, i.page) == (doc, page)
            for c in corpus.copies_of(i)
            if (c.document, c.page) != (doc, page)
        }
        for other in sorted(targets):
            queries += 1
            pair = by_docs.get((doc, other)) or by_docs.get((other, doc))
            best = None
            for m in pair["matches"] if pair else []:
                for mine, theirs in ((m["a"], m["b"]), (m["b"], m["a"])):
                    if (
                        locate(corpus, mine) == (doc, page)
                        and theirs["document"] == other
                        and (best is None or m["score"] > best[0])
                    ):
                        best = (m["score"], locate(corpus, theirs))
            ok = best is not None and bool(arts & arts_on.get(best[1], set()))
            hits += ok
            if ok:
                copy_scores.append(best[0])  # type: ignore[index]
            details.append(f"{doc}:{page} -> {other}: {'ok' if ok else 'MISS'} {best}")
    return Report(
        hits / max(1, queries),
        hits,
        queries,
        min(copy_scores, default=0.0),
        max(distinct),
        details,
        copy_scores,
    )
