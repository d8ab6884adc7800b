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
    # Two verified families of 4 (0-3, 4-7): one edge between them is 1 of the 16 pairs, under
    # DENSITY x 16 (single linkage merged them); 2 are enough, and an edge is an edge, verified
    # or the embedding's
    verified = _family(range(4)) + _family(range(4, 8))
    for stray in (method.Edge(3, 4, 0.2, False), method.Edge(3, 4, 0.15, False, 0.99)):
        labels = method.families(8, [*verified, stray], 0.15)
        assert labels[0] == labels[3] != labels[4] == labels[7]
    second = method.Edge(2, 5, 0.15, False, 0.95)
    labels = method.families(8, [*verified, method.Edge(3, 4, 0.2, False), second], 0.15)
    assert len(set(labels.tolist())) == 1


def test_a_lone_item_joins_a_large_family_on_several_edges() -> None:
    # A family of 8 (0-7, a verified chain: each copy verified to one other is enough) and a
    # lone item 8: one embedding edge to it is not a quarter of the family's size (a
    # distractor close to one member); a verified edge or a second edge is enough
    verified = _family(range(8))
    assert method.families(8, verified, 0.15).tolist() == [0] * 8
    one = method.families(9, [*verified, method.Edge(7, 8, 0.15, False, 0.95)], 0.15)
    assert one[8] == -1 and one[0] == one[7] != -1
    two = [*verified, method.Edge(7, 8, 0.15, False, 0.95), method.Edge(2, 8, 0.3, False)]
    assert method.families(9, two, 0.15)[8] == method.families(9, two, 0.15)[0] != -1
    small = method.families(3, [method.Edge(0, 1, 0.5, False), method.Edge(1, 2, 0.2, False)])
    assert small.tolist() == [0, 0, 0]


def test_what_a_join_needs() -> None:
    # Two lone items: one edge; two groups of 4: 2 edges (DENSITY x 16); a lone item and a
    # family of 8: 2 embedding edges (LONE x 8), or one verified
    assert method.joinable(1, 1, 1, 0) and method.joinable(4, 4, 2, 0)
    assert not method.joinable(4, 4, 1, 1) and method.joinable(8, 1, 2, 0)
    assert not method.joinable(8, 1, 1, 0) and method.joinable(8, 1, 1, 1)


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
