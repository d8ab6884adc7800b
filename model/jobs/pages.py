"""One task's page pipeline, built once from its JobContext: fetch -> plan -> decode -> batch.

Every job that reads pages (detect, similarity, vectorize, evaluate, train's IIIF reader,
cluster's manifests) opens them here instead of wiring the parts itself:

- fetch: the worker's safe fetcher scoped to the task (`FetchScope`), so leaving the pipeline
  (the end, a cancel, a timeout, an error) ends the downloads still in flight;
- plan: the task's inputs as numbered units (units.py; a job with its own planner hands its
  plan to `adopt`), the manifests read and their problems recorded at once (shown by /status);
- decode: a `PageLoader` (loading.py) with IIIF size negotiation and the task's caches;
- batch: pages loaded ahead in threads and handed out in batches (`batches`), counted as they go.

`open_pages` writes the pipeline's provenance block (manifests and their problems, limits that
cut the task, pages resumed after, cache hits, bytes fetched, stage timings) in a `finally`, so a
cancelled or timed-out task keeps it like a finished one. This is the one place it is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from model.iiif.info_cache import InfoCache
from model.iiif.loader import ManifestSummary, json_getter
from model.iiif.negotiate import ServiceInfo
from model.jobs.loading import PageLoader, Prepared, page_batches
from model.jobs.units import Plan, WorkUnit, plan_units
from model.pipeline.cache import BoundedCache, DetectionCache
from model.sources.fetch import FetchScope

if TYPE_CHECKING:
    from redis import Redis

    from model.jobs.context import JobContext
    from model.jobs.contract import TaskSpec
    from model.settings import Settings


class PagePlan(Protocol):
    """What any planner gives (units.Plan, similarity's DocumentPlan)."""

    units: list[WorkUnit]
    manifests: list[ManifestSummary]
    problems: list[dict[str, str]]
    warnings: list[dict[str, Any]]


@dataclass
class PageStats:
    """What the pages cost, counted as batches are handed out."""

    hits: int = 0  # pages whose analysis came from the cache
    misses: int = 0  # pages decoded for the job to analyse
    failed: int = 0  # pages that could not be fetched or decoded
    bytes_fetched: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, prepared: Prepared) -> None:
        self.bytes_fetched += prepared.item.get("bytes", 0)
        if prepared.error is not None:
            self.failed += 1
        elif prepared.cached is not None:
            self.hits += 1
        else:
            self.misses += 1
        for stage, seconds in (
            *prepared.timings.items(),
            ("fetch_cpu_s", prepared.fetch_cpu_s),
            ("decode_cpu_s", prepared.decode_cpu_s),
        ):
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds


class Pages:
    """A task's pages; made by `open_pages`, which writes its provenance block on the way out."""

    def __init__(self, ctx: JobContext, provenance: dict[str, Any]) -> None:
        self.ctx = ctx
        self.resources = ctx.resources
        self.settings = ctx.resources.settings
        self.provenance = provenance
        self.scope = FetchScope()
        self.fetcher = self.resources.fetcher.scoped(self.scope)
        self.stats = PageStats()
        # Stage timings: the pipeline's (fetch, decode) and the job's own (inference_s, ...).
        self.timings = self.stats.timings
        self.plan: PagePlan | None = None
        self.resumed_after: int | None = None
        self.started = time.perf_counter()
        self._record_plan = False
        self._batched = False
        self._closing: list[Callable[[], None]] = []

    # --- plan ---------------------------------------------------------------------------------

    def plan_task(
        self, spec: TaskSpec | None = None, keep_manifests: bool = False, record: bool = True
    ) -> Plan:
        """The task's inputs (or `spec`'s) as units. `keep_manifests`: keep the manifests read
        with the result, for viewers; `record`: list them in the task's provenance."""
        spec = spec or self.ctx.spec
        plan = plan_units(spec, self.fetcher, self.settings, self.resources.uploads)
        self.adopt(plan, record)
        if keep_manifests:
            self.keep_manifests(plan.manifests)
        return plan

    def adopt(self, plan: PagePlan, record: bool = True) -> None:
        """A plan made by the job's own planner (with `self.fetcher`)."""
        self.plan, self._record_plan = plan, record
        if record:
            self.provenance.update(self._plan_block())
            self.ctx.set_provenance(self.provenance)  # shown by /status from now on

    def keep_manifests(self, manifests: list[ManifestSummary]) -> None:
        """Keep the manifests read with the task: the API serves them to viewers with the
        result attached (it never fetches). One over iiif.max_kept_manifest_bytes is not kept;
        its annotation pages are served all the same."""
        for manifest in manifests:
            if manifest.document is None:
                continue
            try:
                text = json.dumps(manifest.document, separators=(",", ":"), ensure_ascii=False)
            except (ValueError, RecursionError):
                continue
            if len(text.encode()) <= self.settings.iiif.max_kept_manifest_bytes:
                self.ctx.keep_manifest(manifest.index, text)

    def finished(self) -> set[int]:
        """Items already stored by an earlier attempt (recorded as `resumed_after`)."""
        finished = self.ctx.finished_indices()
        self.resumed_after = len(finished)
        return finished

    def pending(self, units: list[WorkUnit]) -> list[WorkUnit]:
        finished = self.finished()
        return [unit for unit in units if unit.index not in finished]

    # --- decode -------------------------------------------------------------------------------

    def detection_cache(self) -> DetectionCache:
        cache = self.settings.cache
        return DetectionCache(self.resources.redis, cache.ttl_s, cache.max_entries)

    def loader(
        self,
        *,
        cache: BoundedCache,
        params_key: str,
        max_side: int,
        min_side: int,
        analyse_side: int | None = None,
    ) -> PageLoader:
        """Pages fetched through the task's fetcher; see `build_loader`."""
        return build_loader(
            self.fetcher,
            self.settings,
            redis=self.resources.redis,
            uploads=self.resources.uploads,
            cache=cache,
            params_key=params_key,
            max_side=max_side,
            min_side=min_side,
            analyse_side=analyse_side,
        )

    # --- batch --------------------------------------------------------------------------------

    @contextmanager
    def batches(
        self, units: list[WorkUnit], loader: PageLoader
    ) -> Iterator[Iterator[list[Prepared]]]:
        """Pages loaded ahead in threads, in batches of worker.batch_size, each page counted in
        the stats as it is handed out; the cancel flag is checked while waiting for slow
        downloads. Leaving the block cancels the downloads still in flight, and any later fetch
        through this pipeline: fetch what else the job needs before."""
        self._batched = True
        for stage in ("fetch_s", "decode_s"):
            self.timings.setdefault(stage, 0.0)
        with page_batches(units, loader, self.settings, self.scope, self.ctx.check_cancel) as got:
            yield (self._counted(batch) for batch in got)

    def _counted(self, batch: list[Prepared]) -> list[Prepared]:
        for prepared in batch:
            self.stats.add(prepared)
        return batch

    # --- provenance ---------------------------------------------------------------------------

    def closing(self, write: Callable[[], None]) -> None:
        """Run `write` (a job's own figures into the provenance) before the block is written."""
        self._closing.append(write)

    def _plan_block(self) -> dict[str, Any]:
        plan = self.plan
        if plan is None or not self._record_plan:
            return {}
        block: dict[str, Any] = {
            "manifests": [m.as_dict() for m in plan.manifests],
            "manifest_problems": plan.problems,
            "manifest_problems_count": getattr(plan, "problems_count", len(plan.problems)),
        }
        if plan.warnings:  # limits that cut the task
            block["warnings"] = plan.warnings
        return block

    def block(self) -> dict[str, Any]:
        """The pipeline's provenance block as it stands."""
        block = self._plan_block()
        if self.resumed_after is not None:
            block["resumed_after"] = self.resumed_after
        if self._batched:
            settings = self.settings
            block.update(
                pipeline={
                    "download_threads": settings.pipeline.download_threads,
                    "prefetch_depth": settings.pipeline.prefetch_depth,
                    "batch_size": settings.worker.batch_size,
                    "per_host_concurrency": settings.fetch.per_host_concurrency,
                    "per_host_start": settings.fetch.per_host_start,
                    "worker_concurrency": settings.worker.concurrency,
                    "inference_threads": settings.inference_threads(),
                },
                cache={"hits": self.stats.hits, "misses": self.stats.misses},
                pages_failed=self.stats.failed,
                bytes_fetched=self.stats.bytes_fetched,
            )
        block["timings"] = {
            **{k: round(v, 4) for k, v in self.timings.items()},
            "wall_s": round(time.perf_counter() - self.started, 3),
        }
        return block

    def close(self) -> None:
        self.scope.cancel()  # downloads a job started outside `batches` end here
        for write in self._closing:
            write()
        self.provenance.update(self.block())
        self.ctx.set_provenance(self.provenance)


def build_loader(
    fetcher: Any,
    settings: Settings,
    *,
    redis: Redis | None = None,
    uploads: Any = None,
    cache: BoundedCache,
    params_key: str,
    max_side: int,
    min_side: int,
    analyse_side: int | None = None,
) -> PageLoader:
    """Pages fetched through `fetcher` (IIIF image services asked for the size needed, their
    info.json read once and kept in Redis), decoded, shrunk once; results cached in `cache` by
    content and `params_key`. A task gets it from `Pages.loader`; the benchmark's raw baseline
    (bench/raw_e2e.py) builds the same loader outside any task."""
    return PageLoader(
        fetcher=fetcher,
        services=ServiceInfo(
            json_getter(fetcher, settings.iiif.max_json_bytes),
            InfoCache(redis, settings.iiif.info_cache_ttl_s),
        ),
        cache=cache,
        params_key=params_key,
        max_side=max_side,
        min_side=min_side,
        max_pixels=settings.fetch.max_pixels,
        analyse_side=analyse_side,
        uploads=uploads,
    )


@contextmanager
def open_pages(ctx: JobContext, provenance: dict[str, Any]) -> Iterator[Pages]:
    """The task's page pipeline. `provenance` is the job's (already set once): the pipeline's
    block is added to it on the way out, however the block is left."""
    pages = Pages(ctx, provenance)
    try:
        yield pages
    finally:
        pages.close()
