"""The cluster job's cheap verification (model/jobs/cluster/verify.py) and shortlist against
the plain versions they replace: the batched matcher finds similarity's matches, a pair scores
what similarity's check gives it, and skipped pairs change no family."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from model.jobs.cluster import method, verify, words
from model.jobs.similarity.compare import evidence, verify_pair
from model.jobs.similarity.local import LocalFeatures, _matches
from testkit.cluster_corpus import appearance, motif


def _root_sift_like(rng: np.random.Generator, n: int) -> np.ndarray:
    d = rng.random((n, 128)).astype(np.float32) ** 4
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def test_batched_matches_are_similaritys_matches() -> None:
    rng = np.random.default_rng(0)
    a = _root_sift_like(rng, 60)
    others = []
    for n in (40, 25, 3):  # blocks of different lengths, padded to one width
        b = _root_sift_like(rng, n)
        b[: n // 2] = a[: n // 2] + rng.normal(0, 0.01, (n // 2, 128))  # planted matches
        others.append(np.abs(b) / np.linalg.norm(b, axis=1, keepdims=True))
    width = 40
    stacked = np.zeros((len(others) * width, 128), np.float32)
    for n, b in enumerate(others):
        stacked[n * width : n * width + len(b)] = b
    sims = (a @ stacked.T).reshape(len(a), len(others), width)
    found = verify.mutual_ratio_matches(sims, np.array([len(b) for b in others]))
    for b, (ia, ib) in zip(others, found, strict=True):
        fa = LocalFeatures(np.zeros((len(a), 2), np.float32), a, (10, 10))
        fb = LocalFeatures(np.zeros((len(b), 2), np.float32), b, (10, 10))
        want_a, want_b = _matches(fa, fb)
        assert ia.tolist() == want_a.tolist() and ib.tolist() == want_b.tolist()
    assert len(found[0][0]) >= 20  # the planted ones were found


@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.4, 0.7])
def test_min_matches_is_the_fewest_that_can_reach_the_threshold(threshold: float) -> None:
    need = verify.min_matches(threshold)
    assert evidence(need) >= threshold
    assert need == verify.MIN_INLIERS or evidence(need - 1) < threshold


@pytest.fixture(scope="module")
def copies() -> list[method.ClusterItem]:
    """Three appearances of one motif (turned, scaled, maybe mirrored) and one other motif."""
    rng = np.random.default_rng(6)
    art = motif(502, 0)
    images = [appearance(rng, art) for _ in range(3)] + [appearance(rng, motif(502, 1))]
    items = [method.item_features(i, image) for i, image in enumerate(images)]
    for item in items:
        method.set_embedding(item, np.ones(4, np.float32) / 2)
    return items


def test_a_pair_scores_what_similaritys_check_gives_it(copies) -> None:
    upright = [c.upright for c in copies]
    mirrored = [c.mirrored for c in copies]
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    scored, verified = verify.verify_pairs(upright, mirrored, pairs, None, keypoints=500)
    assert verified == len(pairs)
    assert {(0, 1), (0, 2), (1, 2)} <= set(scored)
    for (i, j), s in scored.items():
        side = mirrored[j] if s.mirrored else upright[j]
        assert s.score == pytest.approx(verify_pair(upright[i], side, 0.0).score, abs=2e-3)


def test_every_shortlisted_pair_is_verified_even_when_already_joined(copies, monkeypatch) -> None:
    # Items 0, 1 and 2 are copies: after item 0's round they are joined, and the pair (1, 2)
    # was skipped then; the families' join rule counts the edges between groups, so it is not
    monkeypatch.setattr(verify, "ROUND", 1)
    pairs = {(i, j): False for i in range(4) for j in range(i + 1, 4)}
    edges, verified = method.verify_edges(copies, pairs, threshold=0.1)
    assert verified == 6
    assert {(e.a, e.b) for e in edges if e.score >= 0.1} >= {(0, 1), (0, 2), (1, 2)}
    assert method.families(4, edges, 0.1).tolist() == [0, 0, 0, -1]


@pytest.mark.parametrize("threshold", [None, 0.1])
def test_threads_verify_what_one_thread_does(copies, monkeypatch, threshold) -> None:
    """Several rounds (ROUND 2), items spread over threads: the same scores as one thread
    gives; and a cancel (check raising) ends the pool."""
    monkeypatch.setattr(verify, "ROUND", 2)
    upright = [c.upright for c in copies] * 3  # 12 items: 3 copies of each, 6 rounds
    mirrored = [c.mirrored for c in copies] * 3
    pairs = [(i, j) for i in range(12) for j in range(i + 1, 12)]
    one = verify.verify_pairs(upright, mirrored, pairs, threshold, threads=1)
    assert verify.verify_pairs(upright, mirrored, pairs, threshold, threads=2) == one
    edges = [method.Edge(i, j, s.score, s.mirrored) for (i, j), s in one[0].items()]
    # Copies of items 0-2 (one motif) make a family, those of item 3 (another) a second
    assert method.families(12, edges, 0.1).tolist() == [0, 0, 0, 1] * 3
    assert one[1] == len(pairs)  # every pair verified, none skipped as joined

    calls = []

    def cancel() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        verify.verify_pairs(upright, mirrored, pairs, threshold, check=cancel, threads=2)
    assert len(calls) == 3


def test_threaded_shortlist_is_the_one_thread_one(monkeypatch) -> None:
    """Blocks of 7 rows over 60 items on two threads: the same pairs and orientations."""
    rng = np.random.default_rng(3)
    items = []
    for _ in range(60):
        turned = rng.normal(size=(10, 32)).astype(np.float32)
        turned /= np.linalg.norm(turned, axis=1, keepdims=True)
        e = rng.normal(size=16).astype(np.float32)
        upright = SimpleNamespace(layout=turned[2], embedding=e / np.linalg.norm(e))
        hashed = tuple(rng.integers(0, words.WORDS, 40) for _ in range(2))
        items.append(SimpleNamespace(upright=upright, turned=turned, words=hashed))
    monkeypatch.setattr(method, "BLOCK", 7)
    one = method.shortlist(items, 4, threads=1)
    assert len(one) >= 60 * 4 / 2
    assert method.shortlist(items, 4, threads=2) == one


def test_projection_keeps_dot_products_within_its_span() -> None:
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(64, 6)))[0].T  # 6 directions in 64 dimensions
    vectors = (rng.normal(size=(200, 6)) @ basis).astype(np.float32)
    p = method._projection(vectors, 6)
    small = vectors @ p
    assert np.allclose(small @ small.T, vectors @ vectors.T, atol=1e-3)
    assert np.array_equal(method._projection(vectors, 64), np.eye(64, dtype=np.float32))


def test_the_two_pass_shortlist_matches_the_exact_one(monkeypatch) -> None:
    """On vectors of low rank the projection loses nothing: the two-pass shortlist (forced on
    60 items, 8 dimensions kept, 12 candidates) finds the exact shortlist's pairs."""
    rng = np.random.default_rng(2)
    layout_basis, emb_basis = rng.normal(size=(8, 32)), rng.normal(size=(8, 16))
    items = []
    for _ in range(60):
        turned = rng.normal(size=(10, 8)) @ layout_basis
        turned /= np.linalg.norm(turned, axis=1, keepdims=True)
        e = rng.normal(size=8) @ emb_basis
        # No keypoints: the bag of words (full rank) is zero, the other two terms decide
        upright = SimpleNamespace(layout=turned[2], embedding=e / np.linalg.norm(e))
        none = (np.zeros(0, np.int32), np.zeros(0, np.int32))
        items.append(SimpleNamespace(upright=upright, turned=turned.astype(np.float32), words=none))
    emb = np.stack([i.upright.embedding for i in items])
    turned = np.stack([i.turned for i in items]).reshape(-1, 32)
    layout = (np.stack([i.upright.layout for i in items]) @ turned.T).reshape(60, 60, 10)
    sims = (layout.max(axis=2) + emb @ emb.T) / 2
    np.fill_diagonal(sims, -np.inf)
    exact = {(min(i, int(j)), max(i, int(j))) for i in range(60) for j in np.argsort(-sims[i])[:4]}
    assert set(method.shortlist(items, 4)) == exact  # one exact pass (few items)
    monkeypatch.setattr(method, "EXACT_ITEMS", 0)
    monkeypatch.setattr(method, "PROJECTED", 8)
    monkeypatch.setattr(method, "COARSE", 12)
    assert set(method.shortlist(items, 4)) == exact


def test_alignments_find_each_copy_and_its_mirror(copies) -> None:
    flipped = method.item_features(
        4, Image.fromarray(copies[1].analysed).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    )
    others = [copies[1], copies[2], copies[3], flipped]
    found = verify.alignments(
        copies[0].upright, [o.upright for o in others], [o.mirrored for o in others]
    )
    assert found[2] is None  # the other motif
    for n in (0, 1, 3):
        assert found[n] is not None and found[n][0] > 0.2 and found[n][1].shape == (2, 3)
    assert found[3][2] is not found[0][2]  # the mirrored copy aligns the other way round
