"""Cancel on the live stack ends a task's downloads: a server trickling one byte every 0.5 s
(which the stack's 1 s per-read timeout never trips) sees its connections closed within
seconds, and the next task for that host is not stuck behind per-host slots the cancelled
task's download threads would otherwise hold for as long as the trickle lasts."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from server.tests.test_fetch_hardening import TrickleServer
from testkit.stack import Api

pytestmark = pytest.mark.live


def blank_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), "white").save(buffer, format="JPEG")
    return buffer.getvalue()


def test_cancel_closes_downloads_and_frees_the_host(iiif_api: Api) -> None:
    trickle = TrickleServer(interval_s=0.5, ok_body=blank_jpeg())
    try:
        urls = [f"{trickle.url}/slow/{i}.jpg" for i in range(6)]
        task = iiif_api.submit_ok({"type": "detect", "input": {"image_urls": urls}})
        # The stack allows 2 requests per host: both trickle, the other threads wait for a slot.
        assert trickle.wait_for(lambda: trickle.open == 2, 120), trickle
        time.sleep(2)  # past the 1 s per-read timeout: the trickle keeps them alive
        assert trickle.open == 2, trickle

        assert iiif_api.terminate(task).status_code == 202
        iiif_api.wait(task, until={"CANCELLED"}, timeout_s=30)
        closed = trickle.wait_for(lambda: trickle.open == 0, 10)
        assert closed, f"{trickle.open} trickled connections still open 10 s after the cancel"

        # A task for the same host runs now, not when the trickle ends (here: never).
        follow = iiif_api.submit_ok(
            {"type": "detect", "input": {"image_urls": [f"{trickle.url}/ok.jpg"]}}
        )
        body = iiif_api.wait(follow, timeout_s=60)
        assert body["state"] == "SUCCEEDED", body
        assert [item["status"] for item in body["result"]["items"]] == ["ok"], body
        assert trickle.accepted == 3  # the two trickles and the follow-up: nothing restarted
    finally:
        trickle.stop()
