"""GET /status serialises its body with pydantic-core (model/api/tasks.py): the same JSON as
Flask's jsonify of the dumped model, non-ASCII text and awkward floats included."""

from __future__ import annotations

import json

from flask import jsonify

from model.api.tasks import WITH_ITEMS, _status_body
from model.tasks.states import State


def test_status_body_is_the_json_jsonify_would_send(app_client) -> None:
    svc = app_client.application.extensions["scriptorium"]
    key = app_client.environ_base["HTTP_X_API_KEY"]
    owner = svc.keys.lookup(key).name
    record = svc.store.create(owner, "detect", {"params": {}, "inputs": []}, 1, 60)
    token = svc.store.mark_running(record.id, 1234, "host:1:1234")
    item = {
        "index": 0,
        "source": "https://example.org/Bibliothèque/page 1.jpg",
        "status": "ok",
        "label": "Folio 1r — «titre» 漢字",
        "detections": [{"xywh": [1, 2, 3, 4], "confidence": 0.8734, "label": "illustration"}],
        "timings": {"decode_s": 0.00005, "fetch_s": 1e-7, "inference_s": 12.5, "big": 1e22},
    }
    assert svc.store.add_item(record.id, item, False, token)
    assert svc.store.finish(record.id, State.SUCCEEDED, holder=token)

    resp = app_client.get(f"/status/{record.id}")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    sent = resp.get_data()
    assert sent.isascii() and sent.endswith(b"\n")
    with app_client.application.test_request_context():
        latest, items, count = svc.store.snapshot(record.id, WITH_ITEMS)
        body = _status_body(svc, latest, items, count)
        expected = jsonify(body.model_dump(mode="json")).get_data()
    assert json.loads(sent) == json.loads(expected)
    assert list(json.loads(sent)) == list(json.loads(expected))  # field order kept
    assert json.loads(sent)["result"]["items"][0]["label"] == item["label"]
