"""The cluster job end to end on the IIIF session stack: images of known families (re-drawn,
turned, scaled, mirrored, cropped, re-inked copies; testkit/cluster_corpus.py) from URLs and
from a detect task's regions; its prototypes (also through a share link), the contact sheet and
the IIIF collection; bad input, cancel and a timeout before clustering."""

from __future__ import annotations

import io
from typing import Any

import pytest
import requests
from PIL import Image

from server.tests.conftest import CLUSTER_SEED
from testkit.browser import artifact
from testkit.cluster_corpus import DISTRACTOR, build
from testkit.iiif_server import IiifServer, Rule, jpeg
from testkit.similarity_corpus import Corpus, instance_of
from testkit.similarity_corpus import build as build_pages
from testkit.stack import Api, Stack

pytestmark = pytest.mark.live


def _family_of(member: dict[str, Any], urls: list[str], labels: list[int]) -> int:
    return labels[urls.index(member["image_url"])]


def test_url_images_are_grouped_into_their_families(
    url_run: dict[str, Any], corpus_urls: tuple[list[str], list[int]]
) -> None:
    urls, labels = corpus_urls
    result = url_run["result"]
    assert url_run["progress"]["done"] == len(urls)
    assert all(item["status"] == "ok" for item in result["items"])
    assert result["clustering"]["state"] == "done"
    found = [{_family_of(m, urls, labels) for m in c["members"]} for c in result["clusters"]]
    # Every family found and pure (one motif each), most members in it, no lone motif in any
    assert sorted(f for found_in in found for f in found_in) == [0, 1, 2], found
    assert sum(len(c["members"]) for c in result["clusters"]) >= 8
    lone = {u for u, label in zip(urls, labels, strict=True) if label == DISTRACTOR}
    assert lone <= {m["image_url"] for m in result["unclustered"]}
    for cluster in result["clusters"]:
        assert cluster["size"] == len(cluster["members"])
        assert 0 < cluster["cohesion"] <= 1
        assert all(0 <= m["score"] <= 1 for m in cluster["members"])
    assert result["provenance"]["stage"] == "done"


def _png(response: requests.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_prototypes_are_served_to_the_key_and_through_a_share_link(
    iiif_stack: Stack, iiif_api: Api, url_run: dict[str, Any]
) -> None:
    task_id = url_run["task_id"]
    cluster = url_run["result"]["clusters"][0]
    url = cluster["prototype_url"]
    assert url.endswith(f"/result/{task_id}/clusters/{cluster['id']}/prototype.png")
    path = url.split(iiif_api.base_url, 1)[-1] if url.startswith(iiif_api.base_url) else None
    path = path or f"/result/{task_id}/clusters/{cluster['id']}/prototype.png"
    answer = iiif_api.request("GET", path)
    picture = _png(answer)
    assert min(picture.size) >= 64
    artifact("cluster-prototype.png").write_bytes(answer.content)  # docs/cluster.md shows it
    # Another key sees no such task; a share link opens it without a key.
    other = iiif_stack.client(iiif_stack.keys["iiif-other"])
    assert other.request("GET", path).status_code == 404
    share = iiif_api.request("POST", f"/result/{task_id}/shares", json={}).json()
    anonymous = iiif_stack.client(None)
    _png(anonymous.request("GET", path, params={"token": share["token"]}))
    shared = anonymous.request("GET", f"/result/{task_id}", params={"token": share["token"]})
    assert "token=" in shared.json()["clusters"][0]["prototype_url"]
    assert iiif_api.request("GET", f"/result/{task_id}/clusters/99/prototype.png").status_code == (
        404
    )


def test_contact_sheet_and_iiif_collection(iiif_api: Api, url_run: dict[str, Any]) -> None:
    task_id = url_run["task_id"]
    clusters = url_run["result"]["clusters"]
    page = iiif_api.request("GET", f"/result/{task_id}", params={"format": "html"})
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src" not in page.headers["Content-Security-Policy"]  # no script at all
    assert "<script" not in page.text
    assert page.text.count('class="row"') == len(clusters) + 1  # + the unclustered row
    collection = iiif_api.request("GET", f"/result/{task_id}", params={"format": "iiif"}).json()
    assert collection["type"] == "Collection"
    assert len(collection["items"]) == len(clusters)
    first = collection["items"][0]["id"].split(iiif_api.base_url, 1)[-1]
    manifest = iiif_api.request("GET", first).json()
    assert manifest["type"] == "Manifest"
    assert len(manifest["items"]) == clusters[0]["size"]
    for canvas in manifest["items"]:
        body = canvas["items"][0]["items"][0]["body"]
        assert body["id"].startswith("http") and canvas["width"] > 0


@pytest.fixture(scope="module")
def book(iiif_server: IiifServer) -> Corpus:
    """Two copies each of art 0 and art 1, one lone art 2, on 4 pages of one manifest."""
    layout = {"book": [[(0, False), (2, False)], [(0, True)], [(1, False)], [(1, True)]]}
    return build_pages(iiif_server, "clu", layout, seed=5)


def _one_motif_per_family(body: dict[str, Any], pages: Corpus, task_id: str | None) -> None:
    assert body["state"] == "SUCCEEDED", body
    clusters = body["result"]["clusters"]
    assert clusters, body["result"]
    for cluster in clusters:
        arts = set()
        for member in cluster["members"]:
            assert member.get("task_id") == task_id
            assert member["canvas_id"] in pages.canvas_ids.values()
            assert member["coordinates"] == "canvas" and len(member["xywh"]) == 4
            instance = instance_of(pages, member)
            arts.add(instance.art if instance else None)
        assert len(arts) == 1 and None not in arts, arts  # one motif per family
        assert arts <= {0, 1}  # never the lone motif


def test_detected_illustrations_are_items(iiif_api: Api, book: Corpus) -> None:
    detect = iiif_api.submit_ok(
        {"type": "detect", "input": {"manifest_url": book.manifests["book"]}}
    )
    assert iiif_api.wait(detect, timeout_s=120)["state"] == "SUCCEEDED"
    body = iiif_api.wait(
        iiif_api.submit_ok({"type": "cluster", "input": {"task_ids": [detect]}}), timeout_s=240
    )
    _one_motif_per_family(body, book, detect)


def test_illustrations_of_manifests_are_detected_on_the_fly(iiif_api: Api, book: Corpus) -> None:
    body = iiif_api.wait(
        iiif_api.submit_ok(
            {"type": "cluster", "input": {"manifest_urls": [book.manifests["book"]]}}
        ),
        timeout_s=240,
    )
    _one_motif_per_family(body, book, None)
    assert body["progress"]["total"] == len(body["result"]["items"]) >= 4


def test_bad_input_is_refused_with_4xx(iiif_stack: Stack, iiif_api: Api) -> None:
    one = iiif_api.submit({"type": "cluster", "input": {"image_urls": ["http://a.example/x"]}})
    assert (one.status_code, one.json()["error"]["code"]) == (422, "too_few_items")
    mine = iiif_api.submit_ok({"type": "noop"})
    iiif_api.wait(mine)
    other = iiif_stack.client(iiif_stack.keys["iiif-other"])
    stolen = other.submit({"type": "cluster", "input": {"task_ids": [mine]}})
    assert (stolen.status_code, stolen.json()["error"]["code"]) == (404, "source_not_found")
    wrong = iiif_api.submit({"type": "cluster", "input": {"task_ids": [mine]}})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (422, "source_unusable")
    assert iiif_api.submit({"type": "cluster", "input": {"task_ids": ["../x"]}}).status_code == 422
    assert iiif_api.submit({"type": "cluster"}).status_code == 422


def test_uploaded_images_are_items(iiif_api: Api) -> None:
    """Two families uploaded (multipart, no `input`), and one upload that is no image inside:
    the families come back with the uploads as members, the bad one as a failed item."""
    corpus = build(CLUSTER_SEED, families=3, members=(3, 3), distractors=2)
    chosen = [
        (image, label)
        for image, label in zip(corpus.images, corpus.labels, strict=True)
        if label < 2
    ]
    uploads = [(f"item{n}.jpg", jpeg(image, 90)) for n, (image, _) in enumerate(chosen)]
    family = {
        f"upload:{name}": label for (name, _), (_, label) in zip(uploads, chosen, strict=True)
    }
    corrupt = ("bad.jpg", b"\xff\xd8\xff\xe0" + b"no pixels here" * 20)  # a JPEG by its magic
    answer = iiif_api.upload([*uploads, corrupt], type="cluster")
    assert answer.status_code == 202, answer.text
    body = iiif_api.wait(answer.json()["task_id"], timeout_s=240)
    assert body["state"] == "SUCCEEDED", body
    result = body["result"]
    assert body["progress"]["total"] == len(uploads) + 1
    failed = [item for item in result["items"] if item["status"] == "failed"]
    assert [(f["source"], f["error"]["code"]) for f in failed] == [
        ("upload:bad.jpg", "corrupt_image")
    ]
    ok = [item for item in result["items"] if item["status"] == "ok"]
    assert sorted(item["source"] for item in ok) == sorted(family)
    assert all(item.get("image_url") is None and item["width"] > 0 for item in ok)
    found = []
    for cluster in result["clusters"]:
        assert all(m.get("image_url") is None for m in cluster["members"])
        found.append({family[m["source"]] for m in cluster["members"]})
    assert sorted(f for motifs in found for f in motifs) == [0, 1], found  # both, each pure
    assert sum(len(c["members"]) for c in result["clusters"]) >= 5
    # The contact sheet and the family's manifest name the uploads (no picture to show)
    task_id = body["task_id"]
    page = iiif_api.request("GET", f"/result/{task_id}", params={"format": "html"})
    assert page.status_code == 200 and 'title="upload:item' in page.text
    manifest = iiif_api.request("GET", f"/result/{task_id}/clusters/0/manifest").json()
    sources = [c["metadata"][0]["value"]["none"][0] for c in manifest["items"]]
    assert sources == [m["source"] for m in result["clusters"][0]["members"]]
    assert all(not c["items"][0]["items"] for c in manifest["items"])


def _slow_urls(server: IiifServer, name: str, count: int, delay_s: float) -> list[str]:
    image = build(CLUSTER_SEED + 1, families=1, members=(2, 2), distractors=0).images[0]
    urls = []
    for n in range(count):
        path = f"cluster/{name}/{n}.jpg"
        urls.append(server.add(path, jpeg(image)))
        server.rules[f"/{path}"] = Rule(delay_s=delay_s)
    return urls


def test_cancel_while_items_load(iiif_api: Api, iiif_server: IiifServer) -> None:
    urls = _slow_urls(iiif_server, "cancel", 30, 0.5)
    task_id = iiif_api.submit_ok({"type": "cluster", "input": {"image_urls": urls}})
    iiif_api.wait(task_id, {"RUNNING"}, predicate=lambda b: b["progress"]["done"] >= 2)
    assert iiif_api.terminate(task_id).status_code == 202
    end = iiif_api.wait(task_id, timeout_s=30)
    assert end["state"] == "CANCELLED"
    assert end["result"]["clustering"]["state"] == "not reached"


def test_timeout_before_clustering_keeps_the_items(iiif_api: Api, iiif_server: IiifServer) -> None:
    urls = _slow_urls(iiif_server, "timeout", 30, 0.5)
    body = {"type": "cluster", "input": {"image_urls": urls}, "timeout": 8}
    end = iiif_api.wait(iiif_api.submit_ok(body), timeout_s=60)
    assert end["state"] == "TIMED_OUT", end
    done = end["progress"]["done"]
    assert 1 <= done < 30 and len(end["result"]["items"]) == done  # the items so far
    assert end["result"]["clustering"]["state"] == "not reached"
    assert "clustering follows" in end["result"]["clustering"]["message"]
    assert end["result"]["provenance"]["stage"] == "items"
