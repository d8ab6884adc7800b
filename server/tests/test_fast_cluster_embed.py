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
    assert edges == [method.Edge(0, 1, 0.15, True)]
    labels = method.families(len(items), verified + edges, 0.15)
    assert labels[0] == labels[1] != labels[2] == labels[3]


def test_an_embedding_edge_does_not_join_two_verified_families() -> None:
    # Two families of three verified copies (0-2, 3-5) and a lone item 6, all close by the
    # embedding: 6 may join a family, but no embedding edge may merge the two families
    items = _items([[1, 0.01 * n] for n in range(7)])
    verified = [method.Edge(a, b, 0.5, False) for a, b in ((0, 1), (1, 2), (3, 4), (4, 5))]
    pairs = {(2, 3): False, (2, 6): False, (5, 6): False}
    edges = method.embedding_edges(items, pairs, verified, 0.15, 0.92)
    labels = method.families(len(items), verified + edges, 0.15)
    assert labels[0] == labels[2] != labels[3] == labels[5]
    assert labels[6] in (labels[0], labels[3])
    assert len(edges) == 1


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
