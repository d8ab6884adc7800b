"""The cluster job's logic without a stack: families from verified edges, the shortlist and the
verification on real drawings (turned, mirrored copies), prototypes, what the API renders, and
the request checks."""

from __future__ import annotations

import base64
import hashlib
import io
import re

import numpy as np
import pytest
from PIL import Image

from model.jobs.cluster import SPEC, ClusterInput, check, method, prototype, task_inputs
from model.jobs.contract import ImageUpload, InputRejected, ManifestUpload, TaskInput
from model.outputs.annotations import ResultLinks
from model.outputs.cluster import CONTENT_SECURITY_POLICY, STYLE, collection, contact_sheet
from model.settings import Settings
from testkit.cluster_corpus import appearance, motif


def test_families_join_strongest_edges_above_the_threshold() -> None:
    edges = [
        method.Edge(0, 1, 0.9, False),
        method.Edge(1, 2, 0.5, False),
        method.Edge(3, 4, 0.05, False),  # below the threshold
        method.Edge(5, 6, 0.6, True),
    ]
    labels = method.families(8, edges, threshold=0.1)
    assert labels.tolist() == [0, 0, 0, -1, -1, 1, 1, -1]  # largest family first
    assert method.families(8, edges, threshold=0.1, min_cluster_size=3).tolist() == [
        0,
        0,
        0,
        -1,
        -1,
        -1,
        -1,
        -1,
    ]


def test_a_cluster_count_stops_merging_families() -> None:
    # Two families of 2 linked by a weak edge: at most 2 families keeps them apart
    edges = [
        method.Edge(0, 1, 0.9, False),
        method.Edge(2, 3, 0.8, False),
        method.Edge(1, 2, 0.2, False),
    ]
    assert method.families(4, edges, threshold=0.1).tolist() == [0, 0, 0, 0]
    assert method.families(4, edges, threshold=1e-6, clusters=2).tolist() == [0, 0, 1, 1]


@pytest.fixture(scope="module")
def drawings() -> tuple[list[method.ClusterItem], list[int]]:
    """Three appearances each of two motifs (turned, scaled, maybe mirrored, re-inked), and
    one lone motif; a stand-in embedding (the same for all: the layout and SIFT decide)."""
    rng = np.random.default_rng(3)
    images, labels = [], []
    for number in (0, 1):
        art = motif(500, number)
        for _ in range(3):
            images.append(appearance(rng, art))
            labels.append(number)
    images.append(appearance(rng, motif(500, 2)))
    labels.append(-1)
    items = [method.item_features(i, image) for i, image in enumerate(images)]
    for item in items:
        method.set_embedding(item, np.ones(4, np.float32) / 2)
    return items, labels


def test_verified_shortlist_finds_the_families(drawings) -> None:
    """method.cluster, the job's and the benchmark's one call: shortlist, verification,
    (no) embedding edges, families."""
    items, labels = drawings
    clustered = method.cluster(items, 3)
    found = clustered.labels
    assert clustered.threshold == method.DEFAULT_THRESHOLD
    assert clustered.pairs == method.shortlist(items, 3)
    assert 0 < clustered.verified <= len(clustered.pairs)
    truth = np.array(labels)
    for family in set(found.tolist()) - {-1}:
        assert len(set(truth[found == family].tolist())) == 1  # pure
    assert found[-1] == -1  # the lone motif is in no family
    assert len(set(found.tolist()) - {-1}) == 2
    # With a family count, every edge may join and every shortlisted pair is verified
    counted = method.cluster(items, 3, clusters=2)
    assert counted.threshold < method.DEFAULT_THRESHOLD
    assert counted.verified == len(counted.pairs)
    assert counted.labels.max() + 1 >= 2


def test_a_mirrored_copy_is_verified_mirrored() -> None:
    image = appearance(np.random.default_rng(8), motif(501, 1))
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    items = [method.item_features(0, image), method.item_features(1, flipped)]
    for item in items:
        method.set_embedding(item, np.ones(4, np.float32) / 2)
    pairs = method.shortlist(items, 1)
    assert pairs == {(0, 1): True}  # the layout saw it mirrored
    (edge,), _ = method.verify_edges(items, pairs)
    assert edge.mirrored and edge.score > 0.3


def test_prototype_aligns_and_averages_the_members(drawings) -> None:
    items, labels = drawings
    members = [i for i, label in enumerate(labels) if label == 0]
    pairs = {(a, b): False for a in members for b in members if a < b}
    edges, _ = method.verify_edges(items, pairs, threshold=None)
    proto = prototype.build(items, members, edges)
    picture = Image.open(io.BytesIO(proto.png))
    reference = items[members[proto.medoid]].analysed
    assert picture.mode == "L" and picture.size == (reference.shape[1], reference.shape[0])
    assert proto.aligned == 3 and all(s > 0.5 for s in proto.scores), proto.scores

    # The average looks like the reference member, and unlike another motif
    def ncc(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    mean = np.asarray(picture, np.float32)
    other = np.asarray(Image.fromarray(items[3].analysed).resize(picture.size), np.float32)
    assert ncc(mean, reference.astype(np.float32)) > 0.5
    assert ncc(mean, other) < 0.3


SUMMARY = {
    "clusters": [
        {
            "id": 0,
            "size": 2,
            "cohesion": 0.9,
            "members": [
                {"index": 0, "score": 0.9, "image_url": "http://h.example/a.jpg"},
                {
                    "index": 3,
                    "score": 0.8,
                    "task_id": "t",
                    "canvas_id": "http://h.example/c/1",
                    "xywh": [1, 2, 30, 40],
                    "region_url": "http://h.example/iiif/p/1,2,30,40/pct:100/0/default.jpg",
                },
            ],
        }
    ],
    "unclustered": [{"index": 1, "image_url": "http://h.example/<b>.jpg"}],
    "clustering": {"state": "done"},
}


def test_contact_sheet_is_self_contained_and_escaped() -> None:
    links = ResultLinks("https://api.example/result/abc", "to&ken")
    page = contact_sheet("abc", SUMMARY, links)
    assert "<script" not in page
    assert "https://api.example/result/abc/clusters/0/prototype.png?token=to%26ken" in page
    assert 'href="http://h.example/iiif/p/1,2,30,40/pct:100/0/default.jpg"' in page
    assert "&lt;b&gt;" in page and "<b>" not in page
    # The one inline stylesheet is allowed by its hash, nothing else is
    digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    assert re.search(r"<style>(.*?)</style>", page).group(1) == STYLE
    assert f"style-src 'sha256-{digest}'" in CONTENT_SECURITY_POLICY
    assert "script-src" not in CONTENT_SECURITY_POLICY


def test_every_unclustered_item_is_on_the_sheet_uploads_too() -> None:
    # An uploaded image has no URL to show once the task ends: it was left off the sheet, and
    # the count of unclustered items with it
    upload = {"index": 2, "source": "upload:plate.png"}
    summary = {**SUMMARY, "unclustered": [*SUMMARY["unclustered"], upload]}
    page = contact_sheet("abc", summary, ResultLinks("https://api.example/result/abc"))
    assert "Unclustered (2)" in page
    assert 'title="upload:plate.png">item 2</a>' in page


def test_collection_has_a_manifest_per_family() -> None:
    links = ResultLinks("https://api.example/result/abc")
    document = collection("abc", SUMMARY, links)
    assert document["type"] == "Collection"
    assert [m["id"] for m in document["items"]] == [
        "https://api.example/result/abc/clusters/0/manifest"
    ]


def test_requests_need_two_items() -> None:
    settings = Settings()
    one = ClusterInput(image_urls=["http://h.example/a.jpg"])
    with pytest.raises(InputRejected) as refused:
        check(one, task_inputs(one), settings)
    assert refused.value.code == "too_few_items"
    from_task = ClusterInput(task_ids=["a" * 32, "a" * 32])
    assert len(task_inputs(from_task)) == 1  # the same task once
    check(from_task, task_inputs(from_task), settings)  # its illustrations are counted later


def _uploads(count: int) -> list[TaskInput]:
    return [ImageUpload(key=f"sc:upload:t:{n:05d}", filename=f"{n}.jpg") for n in range(count)]


def test_uploaded_images_are_items() -> None:
    settings = Settings()
    empty = ClusterInput()
    with pytest.raises(InputRejected) as refused:
        check(empty, _uploads(1), settings)  # one upload alone is one item
    assert refused.value.code == "too_few_items"
    check(empty, _uploads(2), settings)  # uploads alone, no `input`
    one = ClusterInput(image_urls=["http://h.example/a.jpg"])
    check(one, [*task_inputs(one), *_uploads(1)], settings)  # a URL and an upload
    assert SPEC.initial_total([*task_inputs(one), *_uploads(2)]) == 3
    most = SPEC.limits_in(settings).max_images
    with pytest.raises(InputRejected) as refused:
        check(one, [*task_inputs(one), *_uploads(most)], settings)
    assert refused.value.code == "too_many_items"
    manifest = ManifestUpload(key="sc:upload:t:00009", filename="m.json")
    with pytest.raises(InputRejected) as refused:
        check(empty, [*_uploads(2), manifest], settings)  # cluster takes no manifest uploads
    assert refused.value.code == "invalid_input"


def test_kept_files_live_beside_the_manifests_without_hiding_them(store, clean_redis) -> None:
    from model.keyspace import manifests_key

    store.keep_manifest("t" * 32, 0, "{}", 60)
    store.keep_file("t" * 32, "prototype-0.png", b"\x89PNG...", 60)
    assert store.kept_file("t" * 32, "prototype-0.png") == b"\x89PNG..."
    assert store.kept_file("t" * 32, "prototype-1.png") is None
    assert store.kept_manifest_indices("t" * 32) == {0}  # share links list manifests only
    assert 0 < clean_redis.ttl(manifests_key("t" * 32)) <= 60 + 3600 + 1
