"""Request bodies cost the API process little more than their bytes: a JSON body is capped
(`limits.max_json_body_bytes`) before it is read, an uploaded manifest (`iiif.max_json_bytes`)
before it is parsed, and nesting depth is read from the bytes, never from built objects. The
same through nginx and gunicorn, with the process's memory measured: test_hardening_api.py."""

from __future__ import annotations

import io
import json

import pytest

from model.api.admission import raw_json_depth


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        "12",
        '"[[[["',
        '[1, {"a": "]]]] {{{{", "b": [[]]}]',
        r'["quote \" [[[ still a string", [[["\\"]]]]',
        r'{"\\\\": {"x": "\u005b"}}',
        '[[], [], [[]], {"k": [{}]}]',
    ],
)
def test_depth_is_read_from_the_bytes_as_a_parser_would_count_it(text: str) -> None:
    assert raw_json_depth(text.encode()) == _depth(json.loads(text))


@pytest.fixture
def small_app(make_app):
    client = make_app(limits={"max_json_body_bytes": 64 * 1024}, iiif={"max_json_bytes": 32 * 1024})
    client.environ_base["HTTP_X_API_KEY"] = client.keys.create("fast")
    return client


@pytest.fixture
def never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a body's objects fails the test: what is refused must be refused unparsed
    (small texts, such as the error answered, still parse)."""
    from flask import Request

    loads = json.loads

    def only_small(text: str | bytes, *args: object, **kwargs: object) -> object:
        assert len(text) < 4096, "the body was parsed"
        return loads(text, *args, **kwargs)

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(Request, "get_json", refuse)
    monkeypatch.setattr(json, "loads", only_small)


def _many_small_objects(size: int) -> bytes:
    """What costs a parser the most per byte: tiny objects in one list."""
    one = b'{"a":1},'
    return b'{"type":"noop","x":[' + one * (size // len(one)) + b"{}]}"


def test_a_json_body_over_the_cap_is_refused_unread_and_unparsed(small_app, never_parsed) -> None:
    resp = small_app.post(
        "/task", data=_many_small_objects(200 * 1024), content_type="application/json"
    )
    assert resp.status_code == 413, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert error["code"] == "body_too_large" and str(64 * 1024) in error["message"]


def test_a_chunked_json_body_stops_being_read_at_the_cap(small_app, never_parsed) -> None:
    body = _many_small_objects(200 * 1024)
    resp = small_app.post(
        "/task",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        # No Content-Length (chunked): read until the end, which the cap cuts short.
        environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": ""},
    )
    assert resp.status_code == 413, resp.get_data(as_text=True)
    assert resp.get_json()["error"]["code"] == "body_too_large"


def test_a_deep_json_body_is_refused_before_it_is_parsed(small_app, never_parsed) -> None:
    deep = b'{"type": "noop", "params": ' + b"[" * 40 + b"]" * 40 + b"}"
    resp = small_app.post("/task", data=deep, content_type="application/json")
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "too_deep"
    # Share creation reads JSON too: the same cap holds for every route.
    resp = small_app.post(
        "/result/" + "0" * 32 + "/shares",
        data=_many_small_objects(100 * 1024),
        content_type="application/json",
    )
    assert resp.status_code == 413


def test_an_uploaded_manifest_over_max_json_bytes_is_refused_unparsed(
    small_app, never_parsed
) -> None:
    manifest = _many_small_objects(40 * 1024)
    resp = small_app.post(
        "/task",
        data={"type": "detect", "manifest": (io.BytesIO(manifest), "book.json")},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 413, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert error["code"] == "body_too_large" and "'book.json'" in error["message"]
    deep = b'{"type": "Manifest", "items": ' + b"[" * 40 + b"]" * 40 + b"}"
    resp = small_app.post(
        "/task",
        data={"type": "detect", "manifest": (io.BytesIO(deep), "deep.json")},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "too_deep"


def test_a_json_body_under_the_cap_is_accepted(small_app) -> None:
    resp = small_app.post("/task", json={"type": "noop"})
    assert resp.status_code in (202, 503), resp.get_data(as_text=True)  # no broker here
