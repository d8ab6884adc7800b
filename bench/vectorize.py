"""The vectorize phase of `make bench` (part `vectorize`), also alone: `python -m bench.vectorize`.

- Quality: precision, recall and F1 per primitive kind (model/jobs/vectorize/score.py, the
  issue's tolerances) on synthetic diagrams (synthetic/diagrams.py) of a seed range the
  method was never tuned on (tuning used seeds 0-89; the held-out set starts at 1000), analysed
  in-process with the job's default params.
- Speed: diagrams per second through the service: one vectorize task over N diagrams of about
  1000 px served by a local HTTP server, from submit to its end (fetch, decode, analysis, store).
  The F1 of what the service returned is reported too (the same method: it should agree).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HELD_OUT_SEED = 1000
SERVICE_SEED = 2000


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _table(sums: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        kind: {
            "true": c.true,
            "found": c.found,
            "matched": c.matched,
            "precision": round(c.precision, 3),
            "recall": round(c.recall, 3),
            "f1": round(c.f1, 3),
        }
        for kind, c in sums.items()
    }


def quality(n: int, seed: int = HELD_OUT_SEED) -> dict[str, Any]:
    """F1 per kind, in-process, on n diagrams from `seed` (600-2000 px, the job's defaults)."""
    from PIL import Image

    from model.jobs.vectorize import VectorizeParams
    from model.jobs.vectorize.run import analyse
    from model.jobs.vectorize.score import score_image, total
    from model.jobs.vectorize.transform import Affine, transformed
    from synthetic.diagrams import render_diagram

    params = VectorizeParams()
    per_image, seconds, cpu = [], 0.0, 0.0
    for s in range(seed, seed + n):
        d = render_diagram(s)
        started, cpu_started = time.perf_counter(), time.process_time()
        image = Image.open(io.BytesIO(d.jpeg))
        k = min(1.0, params.max_side / max(image.size))
        small = image.resize((round(image.width * k), round(image.height * k))) if k < 1 else image
        found = transformed(analyse(small, params), Affine.scale(1 / k))
        seconds += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        per_image.append(score_image(found, d.primitives, *image.size))
    return {
        "diagrams": n,
        "seeds": [seed, seed + n - 1],
        "per_kind": _table(total(per_image)),
        "in_process_diagrams_per_s": round(n / seconds, 2),
        # CPU time, which other work on the machine does not inflate as it does wall time.
        "cpu_s_per_diagram": round(cpu / n, 3),
    }


def through_service(
    api: Any, n: int, long_side: int = 1000, figure: Path | None = None
) -> dict[str, Any]:
    """One task over n diagrams of `long_side` px: diagrams per second, submit to end. With
    `figure`, the first diagram beside what the service found on it, as a PNG."""
    from model.jobs.vectorize.score import score_image, total
    from synthetic.diagrams import render_diagram

    root = Path(tempfile.mkdtemp(prefix="bench-vectorize-"))
    diagrams = [render_diagram(SERVICE_SEED + i, long_side=long_side) for i in range(n)]
    for i, d in enumerate(diagrams):
        (root / f"{i}.jpg").write_bytes(d.jpeg)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        body = {"type": "vectorize", "input": {"image_urls": [f"{base}/{i}.jpg" for i in range(n)]}}
        started = time.perf_counter()
        task_id = api.submit_ok(body)
        result = api.wait(task_id, timeout_s=600)
        wall = time.perf_counter() - started
    finally:
        server.shutdown()
    if result["state"] != "SUCCEEDED":
        raise RuntimeError(f"the vectorize task ended {result['state']}: {result.get('error')}")
    items = sorted(result["result"]["items"], key=lambda i: i["index"])
    if figure is not None:
        draw_figure(diagrams[0].image, items[0]["primitives"], figure)
    scores = [
        score_image(item.get("primitives", []), d.primitives, *d.image.size)
        for item, d in zip(items, diagrams, strict=True)
    ]
    return {
        "state": result["state"],
        "diagrams": n,
        "long_side_px": long_side,
        "wall_s": round(wall, 2),
        "diagrams_per_s": round(n / wall, 2),
        "per_kind": _table(total(scores)),
    }


def draw_figure(image: Any, primitives: list[dict[str, Any]], path: Path) -> None:
    """The diagram (left) and the service's primitives drawn over a paler copy (right)."""
    from PIL import Image, ImageDraw

    from model.outputs.vector import COLORS

    page = image.convert("RGB")
    pale = Image.blend(page, Image.new("RGB", page.size, "white"), 0.6)
    draw = ImageDraw.Draw(pale)
    width = max(2, round(max(page.size) / 300))
    for p in primitives:
        color = COLORS[p["kind"]]
        if p["kind"] == "line":
            draw.line([tuple(p["p0"]), tuple(p["p1"])], fill=color, width=width)
            continue
        (cx, cy), r = p["center"], p["radius"]
        box = [cx - r, cy - r, cx + r, cy + r]
        if p["kind"] == "circle":
            draw.ellipse(box, outline=color, width=width)
        else:  # PIL's arcs also run clockwise on screen from start to end: increasing angle
            draw.arc(box, p["start_deg"], p["end_deg"], fill=color, width=width)
    both = Image.new("RGB", (page.width * 2 + 20, page.height), "white")
    both.paste(page, (0, 0))
    both.paste(pale, (page.width + 20, 0))
    both.thumbnail((1600, 1600))
    path.parent.mkdir(parents=True, exist_ok=True)
    both.save(path, optimize=True)


def markdown(r: dict[str, Any]) -> list[str]:
    lines = []
    q = r.get("quality")
    if q:
        lines += [
            "",
            f"## Vectorize: F1 on {q['diagrams']} held-out synthetic diagrams (seeds "
            f"{q['seeds'][0]}-{q['seeds'][1]}), targets line/circle >= 0.85, arc >= 0.7",
            "",
            "| kind | true | found | matched | precision | recall | F1 |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for kind, c in q["per_kind"].items():
            lines.append(
                f"| {kind} | {c['true']} | {c['found']} | {c['matched']} | {c['precision']:.3f}"
                f" | {c['recall']:.3f} | {c['f1']:.3f} |"
            )
        lines.append(
            f"\nIn-process: {q['in_process_diagrams_per_s']} diagrams/s wall, "
            f"{q['cpu_s_per_diagram']} CPU-s per diagram."
        )
    s = r.get("service")
    if s:
        f1 = ", ".join(f"{k} {c['f1']:.3f}" for k, c in s["per_kind"].items())
        lines.append(
            f"Through the service: {s['diagrams_per_s']} diagrams/s ({s['diagrams']} diagrams of "
            f"{s['long_side_px']} px in {s['wall_s']} s, one task; target >= 5); F1 there: {f1}."
        )
    return lines


def run(api: Any, n_quality: int, n_service: int, figure: Path | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if api is not None:
        out["service"] = through_service(api, n_service, figure=figure)
    out["quality"] = quality(n_quality)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vectorize", description=__doc__)
    p.add_argument("--diagrams", type=int, default=200, help="held-out diagrams scored")
    p.add_argument("--service-diagrams", type=int, default=50, help="diagrams through the API")
    p.add_argument("--no-service", action="store_true", help="in-process quality only")
    p.add_argument("--figure", type=Path, help="write the first service diagram's figure here")
    p.add_argument("--save", type=Path, help="also write latest-vectorize.{json,md} in this folder")
    args = p.parse_args(argv)
    stack = None
    try:
        api = None
        if not args.no_service:
            from bench import stack as bench_stack

            stack, _notes = bench_stack.start(Path(tempfile.mkdtemp(prefix="bench-vec-")))
            api = stack.client(bench_stack.bench_key(stack))
        results = run(api, args.diagrams, args.service_diagrams, args.figure)
        text = "\n".join(markdown(results))
        print(text)
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / "latest-vectorize.json").write_text(json.dumps(results, indent=1) + "\n")
            (args.save / "latest-vectorize.md").write_text(text.lstrip("\n") + "\n")
    finally:
        if stack is not None:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
