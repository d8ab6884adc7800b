"""The cluster job's own feature extractor (model/weights/motif-embed.*, trained by
scripts/train_motif_embed.py): copies of one motif embed close, other motifs far, mirrored
copies alike. The families here are drawn from seeds neither the training (100,000 on) nor the
benchmark (1, 1001, 1002) uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from model.inference.registry import discover
from model.jobs.cluster import DEFAULT_EMBED_MODEL, method
from model.jobs.similarity.embedders import load_embedder
from model.settings import Settings
from testkit.cluster_corpus import build

WEIGHTS = Path(__file__).resolve().parents[2] / "model" / "weights"


@pytest.fixture(scope="module")
def embedder() -> object:
    models = discover(Settings().model_dirs)
    return load_embedder(models[DEFAULT_EMBED_MODEL], 1)


@pytest.fixture(scope="module")
def corpus() -> tuple[list[Image.Image], np.ndarray]:
    drawn = build(5003, families=10, members=(4, 5), distractors=0)
    return drawn.images, np.array(drawn.labels)


def test_the_cluster_default_is_an_embed_model_card() -> None:
    info = discover(Settings().model_dirs)[DEFAULT_EMBED_MODEL]
    assert info.task == "embed" and info.format == "onnx"
    assert info.weights.stat().st_size < 5_000_000


def test_nearest_copy_is_of_the_same_motif(embedder: object, corpus: tuple) -> None:
    """Each item's nearest other item by the embedding is a copy of its motif for most items
    (0.95 here; the demo detector's backbone, the similarity job's default: 0.58)."""
    images, labels = corpus
    vectors = embedder.embed(images)  # type: ignore[attr-defined]
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    hits = (labels[sims.argmax(axis=1)] == labels).mean()
    assert hits >= 0.75, hits


def test_a_mirrored_copy_embeds_alike(embedder: object, corpus: tuple) -> None:
    images, _ = corpus
    upright = embedder.embed(images[:4])  # type: ignore[attr-defined]
    mirrored = embedder.embed([ImageOps.mirror(i) for i in images[:4]])  # type: ignore[attr-defined]
    assert np.all((upright * mirrored).sum(axis=1) > 0.99)


def _items(vectors: list[list[float]]) -> list[method.ClusterItem]:
    """Items that differ only in their embedding (embedding_edges reads nothing else)."""
    blank = Image.new("RGB", (64, 64), "white")
    out = []
    for n, v in enumerate(vectors):
        item = method.item_features(n, blank)
        method.set_embedding(item, np.array(v, np.float32) / np.linalg.norm(v))
        out.append(item)
    return out


def test_embedding_edges_link_close_pairs_the_check_missed() -> None:
    items = _items([[1, 0], [1, 0.1], [0, 1], [0.1, 1]])  # cosines 0.995 within, ~0.1 across
    pairs = {(0, 1): True, (0, 2): False, (2, 3): False}
    verified = [method.Edge(2, 3, 0.5, False)]  # already linked by the pair check
    edges = method.embedding_edges(items, pairs, verified, 0.15, 0.92)
    assert [(e.a, e.b, e.score, e.mirrored) for e in edges] == [(0, 1, 0.15, True)]
    assert edges[0].cosine == pytest.approx(1 / np.sqrt(1.01))
    labels = method.families(len(items), verified + edges, 0.15)
    assert labels[0] == labels[1] != labels[2] == labels[3]


def _family(members: range, score: float = 0.5) -> list[method.Edge]:
    """A verified chain through these items."""
    return [method.Edge(a, a + 1, score, False) for a in members[:-1]]


def test_one_stray_edge_does_not_merge_two_families() -> None:
    # Two verified families of 4 (0-3, 4-7): one edge between them, verified or the
    # embedding's, is under DENSITY x 4 x 4 (single linkage merged them); two are enough
    verified = _family(range(4)) + _family(range(4, 8))
    for stray in (method.Edge(3, 4, 0.2, False), method.Edge(3, 4, 0.15, False, 0.99)):
        labels = method.families(8, [*verified, stray], 0.15)
        assert labels[0] == labels[3] != labels[4] == labels[7]
        merged = method.families(8, [*verified, stray], 0.15, single_linkage=True)
        assert merged.tolist() == [0] * 8  # the methods before, kept as the bench's baseline
    second = method.Edge(2, 5, 0.15, False, 0.95)
    labels = method.families(8, [*verified, method.Edge(3, 4, 0.2, False), second], 0.15)
    assert len(set(labels.tolist())) == 1


def test_a_lone_item_joins_a_large_family_on_a_verified_edge_or_several_others() -> None:
    # A family of 8 (0-7) and a lone item 8: one embedding edge (a distractor close to one
    # member) is not enough, nor 3; LONE x 8 = 4 are, or a single verified edge
    verified = _family(range(8))
    assert method.families(8, verified, 0.15).tolist() == [0] * 8
    close = [method.Edge(m, 8, 0.15, False, 0.95) for m in (7, 5, 3, 1)]
    for count, joined in ((1, False), (3, False), (4, True)):
        labels = method.families(9, [*verified, *close[:count]], 0.15)
        assert bool(labels[8] == labels[0] != -1) is joined, count
    one_verified = method.families(9, [*verified, method.Edge(7, 8, 0.15, False)], 0.15)
    assert one_verified[8] == one_verified[0] != -1


def test_a_large_family_stays_one() -> None:
    # 150 copies, each verified against 8 others (what the shortlist gives it), scores in any
    # order: the join rule counts a group's size only up to the shortlist's reach, so a large
    # family is not broken up for lack of edges no shortlist could supply
    rng = np.random.default_rng(0)
    edges = {
        (min(i, j), max(i, j)): float(rng.uniform(0.2, 0.9))
        for i in range(150)
        for j in rng.choice([x for x in range(150) if x != i], 8, replace=False)
    }
    labels = method.families(150, [method.Edge(a, b, s, False) for (a, b), s in edges.items()])
    assert labels.tolist() == [0] * 150


def test_what_a_join_needs() -> None:
    # Two lone items: one edge; two groups of 4: 2 (DENSITY x 4 x 4); a lone item and a
    # family of 8: 4 embedding edges (LONE x 8) or one verified; two groups of 100: 80, as
    # for groups of 100 and 8 (the larger counted up to the shortlist's reach)
    assert method.joinable(1, 1, 1, 0, 8) and method.joinable(4, 4, 2, 0, 8)
    assert not method.joinable(4, 4, 1, 1, 8) and method.joinable(8, 1, 4, 0, 8)
    assert not method.joinable(8, 1, 3, 0, 8) and method.joinable(8, 1, 1, 1, 8)
    assert method.joinable(100, 100, 80, 80, 8) and not method.joinable(100, 100, 79, 79, 8)
    # An edge of an item with itself (none should come) is ignored, not a crash
    self_edge = [method.Edge(0, 1, 0.5, False), method.Edge(1, 1, 0.9, False)]
    assert method.families(3, [*self_edge, method.Edge(1, 2, 0.4, False)]).tolist() == [0] * 3


def test_no_embedding_edges_without_a_calibrated_cosine() -> None:
    items = _items([[1, 0], [1, 0.1]])
    assert method.embedding_edges(items, {(0, 1): False}, [], 0.15, None) == []


@pytest.mark.parametrize("value", ["0.9", [0.9], True, float("nan"), 0, -1, 1.5])
def test_a_card_whose_link_cosine_is_no_cosine_is_not_a_model(
    value: object, tmp_path: Path
) -> None:
    # Read as given, a string failed every cluster task after its items were embedded, and
    # -1 linked every shortlisted pair; such a card is now unreadable, like any broken card.
    card = json.loads((WEIGHTS / f"{DEFAULT_EMBED_MODEL}.json").read_text())
    shutil.copy(WEIGHTS / card["weights"], tmp_path / card["weights"])
    (tmp_path / "ok.json").write_text(json.dumps({**card, "name": "ok"}))
    (tmp_path / "bad.json").write_text(json.dumps({**card, "name": "bad", "link_cosine": value}))
    found = discover([tmp_path])
    assert found["ok"].options["link_cosine"] == card["link_cosine"]
    assert "bad" not in found
