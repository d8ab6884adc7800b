"""The pair check's coarse second chance (model/jobs/cluster/coarse.py, verify.second_chance):
copies whose fine keypoints do not verify are joined on the blurred item's keypoints, and a
different motif is not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model.jobs.cluster import coarse, method, verify
from model.jobs.similarity.local import LocalFeatures
from testkit.cluster_corpus import appearance, motif

NONE = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), (256, 256))


def _without_fine(item: method.ClusterItem) -> method.ClusterItem:
    """The item with no fine keypoints: only the coarse ones can verify it."""
    return dataclasses.replace(
        item,
        upright=dataclasses.replace(item.upright, local=NONE),
        mirrored=dataclasses.replace(item.mirrored, local=NONE),
    )


@pytest.fixture(scope="module")
def engravings() -> list[method.ClusterItem]:
    """Two appearances of one engraving (motif number 3: kind 'engraving') and another one."""
    rng = np.random.default_rng(14)
    art = motif(604, 3)
    images = [appearance(rng, art) for _ in range(2)] + [appearance(rng, motif(604, 8))]
    return [method.item_features(i, image) for i, image in enumerate(images)]


def test_items_carry_coarse_keypoints(engravings: list[method.ClusterItem]) -> None:
    for item in engravings:
        assert item.coarse is not None
        upright, mirrored = item.coarse
        assert (
            0 < len(upright.local) <= coarse.KEYPOINTS
            and 0 < len(mirrored.local) <= coarse.KEYPOINTS
        )
        assert upright.local.size == item.upright.local.size  # the same analysed pixels


def test_coarse_keypoints_join_copies_the_fine_ones_miss(
    engravings: list[method.ClusterItem],
) -> None:
    items = [_without_fine(i) for i in engravings]
    pairs = {(0, 1): False, (0, 2): False, (1, 2): False}
    edges, _ = method.verify_edges(items, pairs, threshold=method.DEFAULT_THRESHOLD)
    joined = {(e.a, e.b) for e in edges if e.score >= verify.COARSE_MIN}
    assert joined == {(0, 1)}


def test_no_second_chance_without_coarse_features(
    engravings: list[method.ClusterItem],
) -> None:
    items = [dataclasses.replace(_without_fine(i), coarse=None) for i in engravings]
    edges, _ = method.verify_edges(items, {(0, 1): False}, threshold=method.DEFAULT_THRESHOLD)
    assert edges == []
