"""A bag of visual words per item, for the cluster job's shortlist (numpy only).

Each item's strongest RootSIFT descriptors are hashed by the sign of BITS fixed random
projections (locality-sensitive hashing: nearby descriptors tend to share a code), each
projection cut at its median over the corpus so the codes are evenly used. The item's
histogram of codes, square-rooted and weighted by inverse document frequency, is a unit vector;
two items' cosine counts the local patterns they share wherever they lie, so it survives the
re-drawing, turning, scaling and cropping that move the layout thumbnail. Mirrored items have
their own histogram (SIFT is not mirror-invariant).

No vocabulary to learn or ship: the projections are drawn from a fixed seed, only the medians
and the weights come from the corpus. Measured on bench/cluster.py's dev seed (docs/cluster.md,
Round 3): with the layout thumbnail, the 8-nearest shortlist holds 835 same-family pairs
(against 721 for layout + embedding) at the same size; a learned k-means vocabulary of 256 or
1,024 words did no better than these 1,024 codes.
"""

from __future__ import annotations

import numpy as np

from model.jobs.similarity.features import ItemFeatures

BITS = 10  # 1,024 words
KEYPOINTS = 256  # the strongest descriptors of each item (as the verification's)
SEED = 20261207
SAMPLE = 20_000  # descriptors the medians are taken from


def _planes(dims: int) -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal((dims, BITS)).astype(np.float32)


def _histograms(features: list[ItemFeatures], planes: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    weights = 1 << np.arange(BITS)
    out = np.zeros((len(features), 1 << BITS), np.float32)
    for n, item in enumerate(features):
        d = item.local.descriptors[:KEYPOINTS]
        if len(d):
            codes = ((d @ planes > cuts).astype(np.int64) * weights).sum(axis=1)
            out[n] = np.bincount(codes, minlength=1 << BITS)
    return out


def word_vectors(
    upright: list[ItemFeatures], mirrored: list[ItemFeatures]
) -> tuple[np.ndarray, np.ndarray]:
    """Unit tf-idf vectors (n x 2**BITS) of the items upright and mirrored."""
    n = len(upright)
    found = [u.local.descriptors[:KEYPOINTS] for u in upright if len(u.local.descriptors)]
    dims = found[0].shape[1] if found else 128
    planes = _planes(dims)
    if found:
        sample = np.concatenate(found)
        step = max(1, len(sample) // SAMPLE)
        cuts = np.median(sample[::step] @ planes, axis=0)
    else:
        cuts = np.zeros(BITS, np.float32)
    up, mir = _histograms(upright, planes, cuts), _histograms(mirrored, planes, cuts)
    # A word in many items says little: weighted by log(n / items holding it), either way round
    held = ((up > 0).sum(axis=0) + (mir > 0).sum(axis=0)) / 2
    idf = np.log(n / (1.0 + held)).astype(np.float32)

    def unit(hist: np.ndarray) -> np.ndarray:
        x = np.sqrt(hist) * idf
        return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)

    return unit(up), unit(mir)
