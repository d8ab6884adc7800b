"""Read the manifests a task names (URLs through the safe fetcher, or uploaded JSON) and expand
collections, within limits: collection depth, number of documents fetched, number of canvases.
A collection member already read in the task (same URL or same id) is not read again, so a
collection that includes itself, or a manifest twice, costs one fetch and terminates.

A manifest the task names that cannot be used fails the task (`ManifestError`, with a clear
code); a broken member deep in a collection is only reported, the rest goes on.

What is left out is reported within bounds (a 200-byte request can name manifests of 100,000
canvases each): canvases past the canvas limit are counted, never listed; canvases skipped for
another reason, and problems, are listed up to MAX_LISTED entries each, and counted all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from model.iiif.presentation import Canvas, Document, Member, NotIiif, parse_document
from model.sources.fetch import FetchError

JsonGetter = Callable[[str], Any]  # URL -> parsed JSON; raises FetchError or ValueError

REFUSED_CODES = {"blocked_address", "bad_scheme", "bad_url"}
# Entries listed per list of left-out things (a manifest's skipped canvases, a task's
# problems); the rest are counted only.
MAX_LISTED = 100


class ManifestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_depth: int = 2
    max_canvases: int = 10_000
    max_documents: int = 50


@dataclass
class ManifestSummary:
    """What was read from one manifest (kept in the result's provenance)."""

    index: int
    source: str  # URL or upload name the manifest came from
    id: str
    label: str
    version: int
    canvases: int = 0
    # Canvases without a usable image: the first MAX_LISTED (why each), and how many in all.
    skipped: list[dict[str, str]] = field(default_factory=list)
    skipped_count: int = 0
    over_limit: int = 0  # canvases with an image left out by the canvas limit (counted only)
    document: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # its JSON

    def skip(self, entry: dict[str, str]) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_LISTED:
            self.skipped.append(entry)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "source": self.source,
            "id": self.id,
            "label": self.label,
            "version": self.version,
            "canvases": self.canvases,
            "skipped": self.skipped,
            "skipped_count": self.skipped_count,
            "over_limit": self.over_limit,
        }


@dataclass(frozen=True)
class CanvasTask:
    manifest: ManifestSummary
    canvas: Canvas
    position: int  # 0-based position of the canvas in its manifest


@dataclass
class Loaded:
    manifests: list[ManifestSummary] = field(default_factory=list)
    canvases: list[CanvasTask] = field(default_factory=list)
    # Members left out, limits hit: the first MAX_LISTED, and how many in all.
    problems: list[dict[str, str]] = field(default_factory=list)
    problems_count: int = 0
    unread_members: int = 0  # collection members not read once the canvas limit was reached

    def problem(self, source: str, reason: str) -> None:
        self.problems_count += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append({"source": source, "reason": reason})

    @property
    def over_limit(self) -> int:
        """Canvases with an image left out by the canvas limit, in the manifests read."""
        return sum(m.over_limit for m in self.manifests)


def json_getter(fetcher: Any, max_bytes: int) -> JsonGetter:
    def get(url: str) -> Any:
        return parse_json(fetcher.get(url, max_bytes=max_bytes).content)

    return get


def parse_json(data: bytes | str) -> Any:
    """json.loads, with nesting too deep to parse (RecursionError) reported as invalid JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


class _Reader:
    def __init__(self, get_json: JsonGetter, limits: Limits) -> None:
        self.get_json = get_json
        self.limits = limits
        self.loaded = Loaded()
        self.fetched = 0
        # URLs fetched and document ids read: a collection that includes itself, or lists a
        # manifest twice, must not read (and analyse) it again, nor loop.
        self.fetched_urls: set[str] = set()
        self.read_ids: set[str] = set()

    def fetch(self, url: str) -> Document:
        if self.fetched >= self.limits.max_documents:
            raise ManifestError(
                "too_many_manifests", f"more than {self.limits.max_documents} manifests to read"
            )
        self.fetched += 1
        self.fetched_urls.add(url)
        try:
            return parse_document(self.get_json(url))
        except FetchError as exc:
            code = "manifest_refused" if exc.code in REFUSED_CODES else "manifest_unavailable"
            raise ManifestError(code, f"cannot fetch {url}: {exc.code}: {exc.message}") from exc
        except (ValueError, RecursionError) as exc:
            # json.JSONDecodeError and NotIiif are ValueErrors too.
            reason = str(exc) if isinstance(exc, NotIiif) else "not valid JSON"
            raise ManifestError("manifest_invalid", f"{url}: {reason}") from exc

    def full(self) -> bool:
        return len(self.loaded.canvases) >= self.limits.max_canvases

    def first_time(self, doc: Document) -> bool:
        """Whether `doc` was not read yet in this task (by id); marks it read."""
        if not doc.id:
            return True  # nothing to recognise it by
        if doc.id in self.read_ids:
            return False
        self.read_ids.add(doc.id)
        return True

    def add(self, doc: Document, source: str, depth: int) -> None:
        if doc.kind == "collection":
            self._expand(doc, source, depth)
            return
        summary = ManifestSummary(
            len(self.loaded.manifests), source, doc.id, doc.label, doc.version, document=doc.source
        )
        self.loaded.manifests.append(summary)
        for position, canvas in enumerate(doc.canvases):
            if canvas.image is None:
                summary.skip(
                    {
                        "canvas_id": canvas.id,
                        "label": canvas.label,
                        "reason": canvas.skip_reason or "",
                    }
                )
                continue
            if self.full():
                summary.over_limit += 1  # counted, not listed: there can be 100,000 of them
                continue
            self.loaded.canvases.append(CanvasTask(summary, canvas, position))
            summary.canvases += 1

    def _expand(self, collection: Document, source: str, depth: int) -> None:
        if depth >= self.limits.max_depth + 1:
            self.loaded.problem(source, f"collection nested deeper than {self.limits.max_depth}")
            return
        for member in collection.members:
            if self.full():
                self.loaded.unread_members += 1
                self.loaded.problem(member.id or "", "canvas limit reached: not read")
                continue
            if member.kind == "collection" and depth >= self.limits.max_depth:
                self.loaded.problem(
                    member.id or "", f"collection nested deeper than {self.limits.max_depth}"
                )
                continue
            if member.id and (member.id in self.fetched_urls or member.id in self.read_ids):
                self._already_read(member.id)
                continue
            try:
                doc = self._member_document(member)
            except ManifestError as exc:
                if exc.code == "too_many_manifests":
                    raise
                self.loaded.problem(member.id or "", exc.message)
                continue
            if not self.first_time(doc):
                self._already_read(member.id or doc.id)
                continue
            self.add(doc, member.id or source, depth + 1)

    def _member_document(self, member: Member) -> Document:
        if member.embedded is not None:
            try:
                return parse_document(member.embedded)
            except NotIiif as exc:
                raise ManifestError("manifest_invalid", f"{member.id}: {exc}") from exc
        if member.id:
            return self.fetch(member.id)
        raise ManifestError("manifest_invalid", "collection member without an id")

    def _already_read(self, source: str) -> None:
        self.loaded.problem(source, "already read in this task")


def load(
    urls: list[str],
    uploaded: list[tuple[str, Any]],
    get_json: JsonGetter,
    limits: Limits,
) -> Loaded:
    """Read manifest URLs, then uploaded manifests ((name, parsed JSON)), in that order."""
    reader = _Reader(get_json, limits)
    for url in urls:
        # Each manifest the task names is read as named (even twice); its members are deduped.
        doc = reader.fetch(url)
        reader.first_time(doc)
        reader.add(doc, url, 0)
    for name, doc in uploaded:
        try:
            parsed = parse_document(doc)
        except NotIiif as exc:
            raise ManifestError("manifest_invalid", f"upload {name!r}: {exc}") from exc
        reader.first_time(parsed)
        reader.add(parsed, f"upload:{name}", 0)
    return reader.loaded


def limit_warnings(loaded: Loaded, limits: Limits) -> list[dict[str, Any]]:
    """What a task's status warns of: pages the canvas limit left out (the task succeeds
    without them, so the cut must not go unnoticed)."""
    if not (loaded.over_limit or loaded.unread_members):
        return []
    message = (
        f"{loaded.over_limit} canvases with an image were left out: a task reads at most "
        f"{limits.max_canvases} (iiif.max_canvases)"
    )
    if loaded.unread_members:
        message += f"; {loaded.unread_members} collection members were not read"
    return [
        {
            "code": "canvas_limit",
            "message": message,
            "count": loaded.over_limit,
            "members_not_read": loaded.unread_members,
        }
    ]
