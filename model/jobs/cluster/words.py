"""A bag of visual words per item, for the cluster job's shortlist (numpy only).

Each item's strongest RootSIFT descriptors are hashed by the signs of BITS fixed random
projections (locality-sensitive hashing: nearby descriptors tend to share a code), TABLES
times with other projections. The projections are drawn from a fixed seed and centred (each
orthogonal to the all-ones direction, along which every RootSIFT vector lies far out), so the
codes need nothing from the corpus and are computed with the item's other features. An item's
histogram of codes, square-rooted and weighted by inverse document frequency over the corpus,
is a unit vector; two items' cosine counts the local patterns they share wherever they lie, so
it survives the re-drawing, turning, scaling and cropping that move the layout thumbnail.
Mirrored items have their own codes (SIFT is not mirror-invariant).

Measured on bench/cluster.py's dev seed (docs/cluster.md, Round 3): the 8-nearest shortlist
by layout, embedding and words holds 827 of the 1,369 same-family pairs (721 without the words)
at the same size; a k-means vocabulary learned on the corpus (256 or 1,024 words) did no
better than hashed codes; four tables of 8 bits vary less with the projections' seed than one
of 10 bits.
"""

from __future__ import annotations

import functools

import numpy as np

BITS = 8  # 256 words per table
TABLES = 4
KEYPOINTS = 256  # the strongest descriptors of each item (as the verification's)
SEED = 20261207
WORDS = TABLES << BITS


@functools.cache
def _planes(dims: int) -> np.ndarray:
    """dims x (TABLES * BITS) projections, each centred (zero sum)."""
    planes = np.random.default_rng(SEED).standard_normal((dims, TABLES * BITS))
    return (planes - planes.mean(axis=0, keepdims=True)).astype(np.float32)


def codes(descriptors: np.ndarray) -> np.ndarray:
    """The words (0..WORDS-1) of an item's strongest descriptors, TABLES per descriptor."""
    d = descriptors[:KEYPOINTS]
    if not len(d):
        return np.zeros(0, np.int32)
    bits = (d @ _planes(d.shape[1]) > 0).reshape(len(d), TABLES, BITS)
    values = (bits.astype(np.int32) << np.arange(BITS, dtype=np.int32)).sum(axis=2)
    return (values + (np.arange(TABLES, dtype=np.int32) << BITS)).ravel()


def _counts(codes_of: list[np.ndarray]) -> np.ndarray:
    """n x WORDS counts: one bincount over all items (each item's codes offset by its row)."""
    n = len(codes_of)
    if not n:
        return np.zeros((0, WORDS), np.float32)
    rows = np.repeat(np.arange(n, dtype=np.int64) * WORDS, [len(c) for c in codes_of])
    flat = np.concatenate(codes_of).astype(np.int64) + rows
    return np.bincount(flat, minlength=n * WORDS).reshape(n, WORDS).astype(np.float32)


def word_vectors(
    upright: list[np.ndarray], mirrored: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Unit tf-idf vectors (n x WORDS) of the items upright and mirrored, from their codes."""
    n = len(upright)
    up, mir = _counts(upright), _counts(mirrored)
    # A word in many items says little: weighted by log(n / items holding it), either way round
    held = ((up > 0).sum(axis=0) + (mir > 0).sum(axis=0)) / 2
    idf = np.log(n / (1.0 + held)).astype(np.float32)

    def unit(hist: np.ndarray) -> np.ndarray:
        x = np.sqrt(hist) * idf
        return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)

    return unit(up), unit(mir)
