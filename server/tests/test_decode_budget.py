"""The decode budget: decoded pixels a worker process holds at once are bounded in bytes, so a
few huge but tiny-on-the-wire images cannot multiply its memory (hardening item 6)."""

from __future__ import annotations

import functools
import io
import struct
import threading
import time
import zlib
from pathlib import Path

import psutil
import pytest
from PIL import Image

from model.jobs import loading
from model.jobs.contract import ImageUpload
from model.jobs.units import WorkUnit
from model.pipeline.cache import BoundedCache
from model.pipeline.memory import BudgetRefused, BudgetTimeout, ByteBudget
from model.settings import Settings
from model.sources.images import ImageDecodeError, decode_within, decoded_bytes
from model.uploads import UploadStore
from server.tests.conftest import ImageServer
from testkit.files import encoded
from testkit.memory import peak_rss, tree_rss
from testkit.stack import Api, Stack

MB = 1_000_000


def _in_thread(target, *args) -> tuple[threading.Thread, threading.Event]:  # type: ignore[no-untyped-def]
    """Runs target(*args) in a thread; the event is set once it returned."""
    done = threading.Event()

    def run() -> None:
        target(*args)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


# --- the budget ----------------------------------------------------------------------------------


def test_bytes_are_counted_while_held() -> None:
    budget = ByteBudget(1000)
    budget.acquire(300)
    budget.acquire(500)
    assert budget.in_use == 800
    budget.release(300)
    budget.release(500)
    assert budget.in_use == 0


def test_a_waiter_proceeds_once_bytes_are_released() -> None:
    budget = ByteBudget(1000)
    budget.acquire(700)
    thread, done = _in_thread(budget.acquire, 500)
    assert not done.wait(0.3)  # 700 + 500 do not fit
    budget.release(700)
    assert done.wait(5)
    thread.join()
    assert budget.in_use == 500


def test_concurrent_holders_never_exceed_the_capacity() -> None:
    budget = ByteBudget(1000)
    seen: list[int] = []

    def work(n: int) -> None:
        for _ in range(30):
            with budget.hold(n):
                seen.append(budget.in_use)
                time.sleep(0.001)

    threads = [threading.Thread(target=work, args=(n,)) for n in (100, 300, 450, 600, 900)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(seen) == 150
    assert max(seen) <= 1000
    assert budget.in_use == 0


def test_more_than_the_whole_budget_is_refused_at_once() -> None:
    budget = ByteBudget(1000)
    budget.acquire(999)  # even while others hold it: no waiting for what can never fit
    started = time.monotonic()
    with pytest.raises(BudgetRefused):
        budget.acquire(1001)
    assert time.monotonic() - started < 0.1
    assert budget.in_use == 999


def test_held_bytes_are_released_when_the_block_raises() -> None:
    budget = ByteBudget(1000)
    with pytest.raises(RuntimeError), budget.hold(800):
        raise RuntimeError("decode failed")
    assert budget.in_use == 0
    budget.acquire(1000)  # all of it is free again


def test_waiting_is_bounded_in_time_and_by_stop() -> None:
    budget = ByteBudget(1000)
    budget.acquire(600)
    started = time.monotonic()
    with pytest.raises(BudgetTimeout):
        budget.acquire(500, timeout=0.2)
    assert 0.15 < time.monotonic() - started < 2
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(BudgetTimeout):
        budget.acquire(500, timeout=None, stop=stop.is_set)
    assert time.monotonic() - started < 3
    # Those who gave up are out of the line: the next one is served.
    budget.release(600)
    budget.acquire(1000, timeout=1)


def test_waiters_are_served_in_arrival_order() -> None:
    budget = ByteBudget(1000)
    budget.acquire(500)
    _, big = _in_thread(budget.acquire, 900)
    time.sleep(0.1)
    _, small = _in_thread(budget.acquire, 200)
    # 200 would fit next to 500, but a large page is not starved by smaller ones.
    assert not small.wait(0.3)
    budget.release(500)
    assert big.wait(5) and not small.wait(0.3)
    budget.release(900)
    assert small.wait(5)


def test_zero_capacity_is_no_bound() -> None:
    budget = ByteBudget(0)
    budget.acquire(10**15)
    budget.release(10**15)
    assert budget.in_use == 0


def test_setting_defaults_to_one_gib() -> None:
    assert Settings().pipeline.decode_budget_bytes == 2**30


# --- decoding through the budget -----------------------------------------------------------------


class RecordingBudget(ByteBudget):
    """Remembers what was asked for and the most held at once."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.asked: list[int] = []

    def acquire(self, n: int, timeout: float | None = 1.0, stop=None) -> None:  # type: ignore[no-untyped-def]
        self.asked.append(n)
        super().acquire(n, timeout, stop)


def _noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
    return Image.effect_noise((width, height), 60).convert(mode)


@functools.cache
def _noise_png(mode: str = "RGB") -> bytes:
    """A 2000x1000 PNG of noise, encoded once for the module (a second of compression each)."""
    return encoded(_noise(2000, 1000, mode), "PNG")


def test_estimate_comes_from_the_header() -> None:
    data = _noise_png()
    with Image.open(io.BytesIO(data)) as img:
        # Pillow holds RGB in 4 bytes a pixel; the shrunk 416x208 copy comes on top.
        assert decoded_bytes(img, img.size, (416, 208)) == 2000 * 1000 * 4 + 416 * 208 * 4
    grey = _noise_png("L")
    with Image.open(io.BytesIO(grey)) as img:
        # 1 byte a pixel decoded, then a 4-byte RGB copy of it.
        assert decoded_bytes(img, img.size, img.size) == 2000 * 1000 * (1 + 4 + 4)


def test_decode_holds_the_budget_only_while_decoding() -> None:
    budget = RecordingBudget(100 * MB)
    data = _noise_png()
    image, full, scale = decode_within(data, 10**8, 416, budget)
    assert (image.size, full, image.mode) == ((416, 208), (2000, 1000), "RGB")
    assert scale == 416 / 2000
    assert budget.asked == [2000 * 1000 * 4 + 416 * 208 * 4]
    assert budget.in_use == 0


def test_a_page_bigger_than_the_budget_fails_as_too_large_to_decode() -> None:
    budget = ByteBudget(4 * MB)  # the page needs 8 MB decoded
    with pytest.raises(ImageDecodeError) as refused:
        decode_within(_noise_png(), 10**8, 416, budget)
    assert refused.value.code == "too_large_to_decode"
    assert "pipeline.decode_budget_bytes" in refused.value.message
    assert budget.in_use == 0


def test_a_failing_decode_gives_the_budget_back() -> None:
    budget = ByteBudget(100 * MB)
    data = _noise_png()
    with pytest.raises(ImageDecodeError) as truncated:
        decode_within(data[: len(data) // 2], 10**8, 416, budget)
    assert truncated.value.code == "corrupt_image"
    assert budget.in_use == 0


def test_a_busy_budget_fails_the_page_in_time() -> None:
    budget = ByteBudget(10 * MB)
    budget.acquire(5 * MB)
    with pytest.raises(ImageDecodeError) as waited:
        decode_within(_noise_png(), 10**8, 416, budget, stop=lambda: True)
    assert waited.value.code == "decode_budget_timeout"
    assert budget.in_use == 5 * MB


def test_reduced_jpegs_count_at_their_reduced_size() -> None:
    # One colour: what is asked is read off the header, and noise this size takes seconds.
    page = Image.new("RGB", (4000, 3000), (231, 220, 196))
    data = encoded(page, "JPEG")
    baseline = RecordingBudget(1000 * MB)
    decode_within(data, 10**8, 416, baseline)
    # Decoded at 1/8 scale (500x375) by libjpeg, then shrunk to 416x312.
    assert baseline.asked == [500 * 375 * 4 + 416 * 312 * 4]
    full = RecordingBudget(1000 * MB)
    decode_within(data, 10**8, 416, full, reduce=False)
    assert full.asked == [4000 * 3000 * 4 + 416 * 312 * 4]
    # A progressive JPEG keeps every coefficient of the full image (4:2:0: 1.5 per pixel).
    progressive = RecordingBudget(1000 * MB)
    decode_within(encoded(page, "JPEG", progressive=True), 10**8, 416, progressive)
    assert progressive.asked[0] >= baseline.asked[0] + 4000 * 3000 * 3


@pytest.mark.parametrize("analyse_side", [None, 416], ids=["similarity", "detect"])
def test_page_loader_decodes_through_the_process_budget(
    analyse_side: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = tmp_path / "page.png"
    upload.write_bytes(_noise_png())
    budget = RecordingBudget(4 * MB)
    monkeypatch.setattr(loading, "process_budget", lambda: budget)
    loader = loading.PageLoader(
        fetcher=None,
        services=None,  # type: ignore[arg-type]
        cache=BoundedCache(None, 0, 0),
        params_key="test",
        max_side=1024,
        min_side=416,
        max_pixels=10**8,
        analyse_side=analyse_side,
        uploads=UploadStore(None, upload.parent),  # a path-kept upload (no Redis needed)
    )
    entry = ImageUpload(path=str(upload), filename="page.png")
    prepared = loader(WorkUnit(index=0, source="upload:page.png", upload=entry))
    assert prepared.error is not None and prepared.error[0] == "too_large_to_decode"
    assert len(budget.asked) == 1 and budget.in_use == 0


# --- live stack: four 13000x13000 PNGs of ~0.5 MB each ------------------------------------------

HUGE_SIDE = 13_000  # 169 M pixels: under the session stack's fetch.max_pixels (178,956,970)
# Pillow keeps RGB in 4 bytes a pixel: decoding one such page takes ~676 MB.
ONE_DECODE = HUGE_SIDE * HUGE_SIDE * 4


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def flat_png(side: int, shade: int) -> bytes:
    """An RGB PNG of one colour, compressed row by row (never held decoded in the test)."""
    row = b"\x00" + bytes([shade]) * (side * 3)  # filter byte 0, then the pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def test_live_huge_pngs_decode_within_the_budget(
    stack: Stack, api: Api, image_server: ImageServer
) -> None:
    urls = [image_server.add(f"huge-{i}.png", flat_png(HUGE_SIDE, 180 + i)) for i in range(4)]
    worker = psutil.Process(stack.program_pid("worker"))
    baseline = tree_rss(worker)
    with peak_rss(worker) as peak:
        task_id = api.submit_ok({"type": "detect", "input": {"image_urls": urls}})
        body = api.wait(task_id, timeout_s=600)
    grown = peak[0] - baseline
    print(f"worker RSS: baseline {baseline / 2**30:.2f} GiB, peak {peak[0] / 2**30:.2f} GiB")
    assert body["state"] == "SUCCEEDED", body
    for item in body["result"]["items"]:
        ok = item["status"] == "ok" and item["width"] == HUGE_SIDE
        assert ok or item["error"]["code"] == "too_large_to_decode", item
    # Four decodes at once would need over 2.6 GB; one at a time (the 1 GiB default budget
    # admits one such page) stays near one decode.
    assert grown < ONE_DECODE * 2, f"worker grew by {grown / 2**30:.2f} GiB"
