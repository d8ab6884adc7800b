"""The similarity job end to end on a live stack, against the local IIIF server: three synthetic
documents where some illustrations are copies of others (re-rendered at another scale, slightly
rotated, on other paper with other noise) and some are distinct. Copies must rank first for their
document pair and score clearly above every distinct pair, at region and page level; plus a
document with nothing to detect, the feature cache, a plugged-in feature extractor, bad input,
cancel and timeout mid-task."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.tests.test_faults import pool_child
from synthetic.copies import page_with_illustrations
from testkit.iiif_server import IiifServer, Rule, jpeg, v3_canvas, v3_image, v3_manifest
from testkit.live import starts_processes
from testkit.similarity_corpus import (
    Corpus,
    build,
    evaluate_pages,
    evaluate_regions,
)
from testkit.stack import PROJECT_ROOT, Api, Stack, start_stack

pytestmark = pytest.mark.live

PLUG = "plug-embed"
# alpha/beta/gamma: art numbers per page, True for a copy (kinds cycle line, diagram, ornament,
# engraving, plate). Copies: 0 and 2 (alpha-beta), 1 and 3 (alpha-gamma), 9 twice in gamma
# (a plate, found by the gamma-gamma pair); beta-gamma share nothing.
LAYOUT = {
    "alpha": [[(0, False), (1, False)], [(2, False)], [(3, False)]],
    "beta": [[(0, True), (4, False)], [(2, True)], [(5, False)]],
    "gamma": [[(1, True)], [(3, True), (6, False)], [(9, False), (8, False)], [(9, True)]],
}
PAGES = sum(len(p) for p in LAYOUT.values())
WIDE = {"top_k": 50}  # every verified pair, so the metrics see them all


def plug_model(folder: Path) -> None:
    """An operator's feature extractor: a random 7x7 conv + ReLU as ONNX, with its card."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 7, 7)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "w"], ["conv"], strides=[4, 4]),
            helper.make_node("Relu", ["conv"], ["features"]),
        ],
        "plug",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 128, 128])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8, 31, 31])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, folder / f"{PLUG}.onnx")
    card = {"name": PLUG, "task": "embed", "weights": f"{PLUG}.onnx", "imgsz": 128}
    (folder / f"{PLUG}.json").write_text(json.dumps(card))


@pytest.fixture(scope="module")
@starts_processes
def sim_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    models = tmp_path_factory.mktemp("plug-models")
    plug_model(models)
    stack = start_stack(
        tmp_path_factory.mktemp("similarity-stack"),
        SCRIPTORIUM_MODELS__DIRS=json.dumps([str(PROJECT_ROOT / "model/weights"), str(models)]),
    )
    stack.create_key("sim", "--rate", "100000/second")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def sim_api(sim_stack: Stack) -> Api:
    return sim_stack.client(sim_stack.keys["sim"])


@pytest.fixture(scope="module")
def corpus(iiif_server: IiifServer) -> Corpus:
    return build(iiif_server, "sim", LAYOUT)


def run(api: Api, documents: dict[str, str], timeout_s: float = 300, **params: Any) -> dict:
    body = {"type": "similarity", "input": {"documents": documents}, "params": params}
    return api.wait(api.submit_ok(body), timeout_s=timeout_s)


@pytest.fixture(scope="module")
def region_run(sim_api: Api, corpus: Corpus) -> dict[str, Any]:
    started = time.monotonic()
    body = run(sim_api, corpus.manifests, **WIDE)
    body["wall_s"] = time.monotonic() - started
    return body


def test_models_lists_feature_extractors(sim_api: Api) -> None:
    models = {m["name"]: m for m in sim_api.request("GET", "/models").json()["models"]}
    backbone = models["illustrations-demo-backbone"]
    assert backbone["task"] == "embed" and backbone["classes"] == []
    # The shipped extractor is the detector's own backbone: the same weights file.
    assert backbone["sha256"] == models["illustrations-demo"]["sha256"]
    assert models[PLUG]["task"] == "embed" and models[PLUG]["backends"] == ["onnx"]


def test_region_level_copies_rank_first(region_run: dict, corpus: Corpus) -> None:
    body = region_run
    assert body["state"] == "SUCCEEDED", body
    assert body["progress"] == {"done": PAGES, "total": PAGES, "failed": 0}
    result = body["result"]
    items = result["items"]
    assert [i["document"] for i in items] == [d for d, p in LAYOUT.items() for _ in p]
    assert all(i["coordinates"] == "canvas" and i["canvas_id"] for i in items)
    pairs = result["pairs"]
    keys = list(LAYOUT)
    assert [p["documents"] for p in pairs] == [[a, b] for i, a in enumerate(keys) for b in keys[i:]]
    assert result["comparison"] == {"done": 6, "total": 6}
    for pair in pairs:
        scores = [m["score"] for m in pair["matches"]]
        assert scores == sorted(scores, reverse=True)
        for m in pair["matches"]:
            assert (m["a"]["document"], m["b"]["document"]) == tuple(pair["documents"])
            assert len(m["a"]["xywh"]) == 4 and m["a"]["canvas_id"]
            if pair["documents"][0] == pair["documents"][1]:  # never an item with itself
                assert (m["a"]["index"], m["a"]["region"]) != (m["b"]["index"], m["b"]["region"])
    report = evaluate_regions(corpus, pairs)
    print(
        f"\nregion level: precision@1 {report.precision_at_1:.2f} ({report.hits}/"
        f"{report.queries}), lowest copy {report.min_copy:.3f}, best distinct "
        f"{report.best_distinct:.3f}, margin {report.margin:.3f}; "
        f"{body['wall_s'] / PAGES:.2f} s/page wall, provenance "
        f"{result['provenance']['timings']}\n" + "\n".join(report.details)
    )
    assert report.precision_at_1 == 1.0, report.details
    assert report.margin >= 0.3, report
    # The pair with no copies between them: nothing that looks verified.
    beta_gamma = next(p for p in pairs if p["documents"] == ["beta", "gamma"])
    assert all(m["score"] < 0.2 for m in beta_gamma["matches"])
    provenance = result["provenance"]
    assert provenance["embedder"]["model"] == "illustrations-demo-backbone"
    assert provenance["embedder"]["sha256"] == provenance["detector"]["sha256"]
    assert provenance["params"]["level"] == "region" and "score" in provenance["method"]
    assert set(provenance["documents"]) == set(LAYOUT)


def test_result_endpoint_carries_pairs(sim_api: Api, region_run: dict) -> None:
    doc = sim_api.request("GET", f"/result/{region_run['task_id']}?format=json").json()
    assert doc["pairs"] == region_run["result"]["pairs"]
    assert doc["comparison"] == {"done": 6, "total": 6}
    annotations = sim_api.request(
        "GET", f"/result/{region_run['task_id']}?format=iiif&manifest=0"
    ).json()
    assert annotations["type"] == "AnnotationPage" and annotations["items"]


def test_second_run_reuses_cached_features(sim_api: Api, region_run: dict, corpus: Corpus) -> None:
    again = run(sim_api, corpus.manifests, **WIDE)
    assert again["state"] == "SUCCEEDED"
    cache = again["result"]["provenance"]["cache"]
    assert cache == {"hits": PAGES, "misses": 0}
    assert all(item["cached"] for item in again["result"]["items"])
    best = [[m["score"] for m in p["matches"][:3]] for p in again["result"]["pairs"]]
    assert best == [[m["score"] for m in p["matches"][:3]] for p in region_run["result"]["pairs"]]


def test_page_level(sim_api: Api, corpus: Corpus) -> None:
    started = time.monotonic()
    body = run(sim_api, corpus.manifests, level="page", **WIDE)
    wall = time.monotonic() - started
    assert body["state"] == "SUCCEEDED", body
    pairs = body["result"]["pairs"]
    for pair in pairs:
        for m in pair["matches"]:
            assert m["a"]["region"] is None and m["b"]["region"] is None
            if m["score"] > 0:
                assert m["a"]["match_xywh"] and m["b"]["match_xywh"]
    report = evaluate_pages(corpus, pairs)
    print(
        f"\npage level: precision@1 {report.precision_at_1:.2f} ({report.hits}/"
        f"{report.queries}), lowest copy {report.min_copy:.3f}, best distinct "
        f"{report.best_distinct:.3f}, margin {report.margin:.3f}; {wall / PAGES:.2f} s/page\n"
        + "\n".join(report.details)
    )
    assert report.precision_at_1 >= 0.8, report.details
    # Page level is weaker (a copy is a part of each page; a few inliers among the text):
    # copies still rank first and score above the best distinct pair, most of them far above.
    assert report.margin > 0, report
    assert float(np.median(report.copy_scores)) > report.best_distinct + 0.3, report


def test_document_without_detections(sim_api: Api, iiif_server: IiifServer, corpus: Corpus) -> None:
    canvases = []
    for p in range(2):
        page = page_with_illustrations(4242 + p, [])  # text only
        published = iiif_server.publish(f"sim-blank-{p}", page.image, 3)
        canvas_id = f"{iiif_server.url}/sim/blank/canvas/{p}"
        canvases.append(v3_canvas(canvas_id, f"p. {p + 1}", 1000, 1400, v3_image(published)))
    blank = iiif_server.add_json(
        "sim/blank/manifest.json",
        v3_manifest(f"{iiif_server.url}/sim/blank/manifest.json", "blank", canvases),
    )
    body = run(sim_api, {"alpha": corpus.manifests["alpha"], "blank": blank}, confidence=0.5)
    assert body["state"] == "SUCCEEDED", body
    blank_items = [i for i in body["result"]["items"] if i["document"] == "blank"]
    assert [(i["status"], i["detections"], i["compared"]) for i in blank_items] == [
        ("ok", [], 0),
        ("ok", [], 0),
    ]
    pairs = {tuple(p["documents"]): p for p in body["result"]["pairs"]}
    assert pairs[("alpha", "blank")]["matches"] == []
    assert pairs[("blank", "blank")]["matches"] == []
    assert pairs[("alpha", "blank")]["items"][1] == 0


def test_plugged_in_feature_extractor(sim_api: Api, corpus: Corpus) -> None:
    docs = {k: corpus.manifests[k] for k in ("alpha", "beta")}
    body = run(sim_api, docs, model=PLUG, **WIDE)
    assert body["state"] == "SUCCEEDED", body
    embedder = body["result"]["provenance"]["embedder"]
    assert (embedder["model"], embedder["backend"], embedder["dim"]) == (PLUG, "onnx", 8)
    report = evaluate_regions(corpus, body["result"]["pairs"])
    assert report.precision_at_1 == 1.0, report.details


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"documents": {"only": "http://127.0.0.1/m.json"}}, 422, "invalid_request"),
        (
            {"documents": {f"d{i}": f"http://127.0.0.1/{i}" for i in range(11)}},
            422,
            "too_many_documents",
        ),
        (
            {"documents": {f"d{i}": f"http://127.0.0.1/{i}" for i in range(51)}},
            422,
            "invalid_request",
        ),
        (
            {"documents": {"a": "ftp://127.0.0.1/m.json", "b": "http://x.org/m"}},
            422,
            "invalid_request",
        ),
        ({"documents": {"a": "not a url", "b": "http://x.org/m"}}, 422, "invalid_request"),
        ({"documents": {"a b": "http://x.org/a", "b": "http://x.org/m"}}, 422, "invalid_request"),
        ({"documents": ["http://x.org/a", "http://x.org/b"]}, 422, "invalid_request"),
        ({"manifest_url": "http://x.org/a"}, 422, "invalid_request"),
    ],
)
def test_bad_input_is_refused_at_submit(sim_api: Api, body: dict, status: int, code: str) -> None:
    resp = sim_api.submit({"type": "similarity", "input": body})
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"model": "illustrations-demo"}, 422, "wrong_model_task"),
        ({"detector": "illustrations-demo-backbone"}, 422, "wrong_model_task"),
        ({"model": "nope"}, 422, "unknown_model"),
        ({"model": "../weights/x.onnx"}, 400, "invalid_model_name"),
        ({"level": "book"}, 422, "invalid_request"),
        ({"top_k": 0}, 422, "invalid_request"),
    ],
)
def test_bad_params_are_refused_at_submit(
    sim_api: Api, params: dict, status: int, code: str
) -> None:
    documents = {"a": "http://127.0.0.1/a.json", "b": "http://127.0.0.1/b.json"}
    resp = sim_api.submit(
        {"type": "similarity", "input": {"documents": documents}, "params": params}
    )
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code


def test_non_manifest_url_fails_with_a_clear_code(
    sim_api: Api, iiif_server: IiifServer, corpus: Corpus
) -> None:
    picture = iiif_server.add("sim/not-a-manifest.jpg", jpeg(page_with_illustrations(5, []).image))
    cases = {
        picture: "manifest_invalid",
        iiif_server.add_json("sim/other.json", {"hello": "world"}): "manifest_invalid",
        f"{iiif_server.url}/sim/missing.json": "manifest_unavailable",
    }
    for url, code in cases.items():
        body = run(sim_api, {"alpha": corpus.manifests["alpha"], "odd": url})
        assert body["state"] == "FAILED", body
        assert body["error"]["code"] == code
        assert "'odd'" in body["error"]["message"]


def slow_document(server: IiifServer, name: str, pages: int, delay_s: float) -> str:
    """A manifest whose page images each take delay_s to arrive."""
    data = jpeg(page_with_illustrations(77, []).image)
    canvases = []
    for p in range(pages):
        path = f"sim/{name}/p{p}.jpg"
        server.add(path, data)
        server.rules[f"/{path}"] = Rule(delay_s=delay_s)
        url = f"{server.url}/{path}"
        canvases.append(
            v3_canvas(f"{server.url}/sim/{name}/c{p}", f"p{p}", 1000, 1400, v3_image(None, url))
        )
    return server.add_json(
        f"sim/{name}/manifest.json",
        v3_manifest(f"{server.url}/sim/{name}/manifest.json", name, canvases),
    )


def test_cancel_mid_task(sim_api: Api, iiif_server: IiifServer, corpus: Corpus) -> None:
    slow = slow_document(iiif_server, "slow-cancel", 24, 1.5)
    body = {
        "type": "similarity",
        "input": {"documents": {"alpha": corpus.manifests["alpha"], "slow": slow}},
    }
    task_id = sim_api.submit_ok(body)
    sim_api.wait(task_id, {"RUNNING"}, predicate=lambda b: b["progress"]["done"] >= 4)
    asked = time.monotonic()
    assert sim_api.terminate(task_id).status_code == 202
    end = sim_api.wait(task_id, timeout_s=30)
    assert end["state"] == "CANCELLED"
    assert time.monotonic() - asked < 5  # seen between batches, while downloads wait
    done = end["progress"]["done"]
    assert 4 <= done < 27 and len(end["result"]["items"]) == done  # partial result kept


def test_timeout_mid_task(sim_api: Api, iiif_server: IiifServer, corpus: Corpus) -> None:
    slow = slow_document(iiif_server, "slow-timeout", 24, 1.5)
    body = {
        "type": "similarity",
        "input": {"documents": {"alpha": corpus.manifests["alpha"], "slow": slow}},
        "timeout": 6,
    }
    end = sim_api.wait(sim_api.submit_ok(body), timeout_s=60)
    assert end["state"] == "TIMED_OUT", end
    assert end["error"]["code"] == "timeout"
    done = end["progress"]["done"]
    assert 1 <= done < 27 and len(end["result"]["items"]) == done
    assert end["result"]["provenance"]["stage"] == "features"


def test_killed_worker_resumes_without_repeating_pages(
    sim_stack: Stack, sim_api: Api, iiif_server: IiifServer, corpus: Corpus
) -> None:
    slow = slow_document(iiif_server, "slow-kill", 10, 0.6)
    documents = {"alpha": corpus.manifests["alpha"], "slow": slow}
    task_id = sim_api.submit_ok({"type": "similarity", "input": {"documents": documents}})
    sim_api.wait(task_id, {"RUNNING"}, predicate=lambda b: b["progress"]["done"] >= 4)
    os.kill(pool_child(sim_stack, task_id=task_id), signal.SIGKILL)  # acks_late: it comes back
    end = sim_api.wait(task_id, timeout_s=180)
    assert end["state"] == "SUCCEEDED", end
    indices = sorted(item["index"] for item in end["result"]["items"])
    assert indices == list(range(13))  # every page once, none twice
    assert end["result"]["provenance"]["resumed_after"] >= 4
    assert end["result"]["comparison"] == {"done": 3, "total": 3}
