"""The cluster shortlist's bag of words (model/jobs/cluster/words.py): copies of one motif share
words, mirrored copies through their mirrored histogram, and the shortlist uses them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from model.jobs.cluster import method
from model.jobs.cluster.words import KEYPOINTS, TABLES, WORDS, codes, word_vectors
from testkit.cluster_corpus import appearance, motif

NUMBERS = (0, 1, 2, 4, 0, 1, 2, 4)  # two appearances each of four motifs


def copies() -> list[method.ClusterItem]:
    rng = np.random.default_rng(4)
    items = [method.item_features(i, appearance(rng, motif(503, n))) for i, n in enumerate(NUMBERS)]
    for item in items:
        method.set_embedding(item, np.ones(4, np.float32) / 2)
    return items


def test_the_words_pair_copies_where_layout_and_embedding_see_no_difference() -> None:
    items = copies()
    # Every item given the same layout and embedding: only the bag of words can tell the copies
    flat = np.ones(256, np.float32) / 16
    for item in items:
        item.upright.layout = flat
        item.turned = np.tile(flat, (len(item.turned), 1))
    pairs = method.shortlist(items, 1)
    half = len(NUMBERS) // 2
    assert {(i, i + half) for i in range(half)} <= set(pairs)


def test_word_vectors_are_unit_and_see_a_mirrored_copy() -> None:
    image = appearance(np.random.default_rng(9), motif(504, 2))
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    others = [appearance(np.random.default_rng(n), motif(504, n)) for n in (0, 1, 3)]
    items = [method.item_features(i, im) for i, im in enumerate([image, flipped, *others])]
    upright, mirrored = word_vectors([i.words[0] for i in items], [i.words[1] for i in items])
    assert np.allclose(np.linalg.norm(upright, axis=1), 1.0, atol=1e-4)
    # The flipped image upright is the original mirrored: the same words, up to resampling
    assert upright[1] @ mirrored[0] > 0.5
    assert upright[1] @ mirrored[0] > max(upright[1] @ upright[0], *(upright[1] @ upright[2:].T))


def test_codes_need_nothing_from_the_corpus() -> None:
    """An item's words are fixed by its descriptors alone (computed with its features)."""
    rng = np.random.default_rng(1)
    d = np.abs(rng.normal(size=(300, 128))).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    words = codes(d)
    assert np.array_equal(words, codes(d.copy()))
    assert len(words) == KEYPOINTS * TABLES  # the strongest, once per table
    assert words.min() >= 0 and words.max() < WORDS
    assert len(np.unique(words)) > 100  # the centred projections split RootSIFT vectors
    assert len(codes(np.zeros((0, 128), np.float32))) == 0
