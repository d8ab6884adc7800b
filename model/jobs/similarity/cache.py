"""Page features cached by content, like detections (model/pipeline/cache.py): the key is the
sha256 of the image bytes plus a digest of the model sha256s and the params that shape the
features, so comparing a document again costs no decode, detection or feature extraction.

Entries are larger than detections (keypoints and thumbnails, ~100-300 KB a page), so this
cache has its own key space and bound (`similarity.cache_max_entries`), oldest evicted first,
each entry with a TTL. Same mechanism as detections (BoundedCache); the shared PageLoader
reads `width`, `height` and `detections` (here: the packed features) from a hit.
"""

from __future__ import annotations

from model.keyspace import FEATURE_CACHE_INDEX_KEY, FEATURE_CACHE_PREFIX
from model.pipeline.cache import BoundedCache


class FeatureCache(BoundedCache):
    """Page features: `{"width", "height", "detections": {"detections", "items"}}`."""

    prefix = FEATURE_CACHE_PREFIX
    index_key = FEATURE_CACHE_INDEX_KEY
    kind = "features"
