"""The worker's fetcher, counting what it fetches by host (worker side: imports requests)."""

from __future__ import annotations

from model.metrics.record import Meter
from model.settings import FetchSettings
from model.sources.fetch import FetchError, FetchResult, FetchScope, SafeFetcher


class MeteredFetcher(SafeFetcher):
    """A SafeFetcher whose every `get` counts its bytes, or its error, under the URL's host
    (a cancelled fetch is not an error of the host's)."""

    meter: Meter | None = None

    @classmethod
    def with_meter(cls, fetch: FetchSettings, meter: Meter) -> MeteredFetcher:
        fetcher = cls.from_settings(fetch)
        fetcher.meter = meter
        return fetcher

    def get(
        self, url: str, max_bytes: int | None = None, scope: FetchScope | None = None
    ) -> FetchResult:
        try:
            result = super().get(url, max_bytes, scope)
        except FetchError as exc:
            if self.meter is not None and exc.code != "cancelled":
                self.meter.fetch_failed(url, exc.code)
            raise
        if self.meter is not None:
            self.meter.fetched(url, len(result.content))
        return result
