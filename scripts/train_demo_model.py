#!/usr/bin/env python
"""Train the demo illustration detector on synthetic pages, fully offline on CPU.

Renders a YOLO dataset with ``synthetic.render_page``, trains ``yolov8n.yaml`` from scratch,
measures mAP on a held-out test set rendered from other seeds at larger page sizes, exports ONNX
and writes the weights, a JSON model card and MODEL_CARD.md into ``--out-dir``.

Usage: .venv/bin/python scripts/train_demo_model.py
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from synthetic import render_page  # noqa: E402  (needs the sys.path line above)

NAME = "illustrations-demo"
CLASSES = ["illustration"]
# Page widths (px) rendered per split; heights are 1.25-1.55x the width. Test pages are larger
# than anything seen in training to check that detection does not depend on scan resolution.
TRAIN_WIDTHS = (700, 1300)
TEST_WIDTHS = (1200, 3200)

# Attempts to reach a non-loopback address (there must be none; see _block_network).
_NETWORK_ATTEMPTS: list[str] = []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=REPO / "model" / "weights")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="dataset + runs folder (default: a temp dir, removed afterwards)",
    )
    p.add_argument("--keep-workdir", action="store_true", help="do not delete a temp workdir")
    p.add_argument("--model", default="yolov8n.yaml", help="ultralytics model yaml (never a .pt)")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--imgsz", type=int, default=416)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--train", type=int, default=240, help="training pages")
    p.add_argument("--val", type=int, default=30, help="validation pages (best.pt selection)")
    p.add_argument("--test", type=int, default=120, help="held-out test pages (larger sizes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- offline setup


def _block_network() -> None:
    """Refuse (and record) any connection that is not loopback: the run must stay offline."""
    original = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else None
        if isinstance(host, str):
            try:
                allowed = ipaddress.ip_address(host).is_loopback
            except ValueError:
                allowed = host == "localhost"
            if not allowed:
                _NETWORK_ATTEMPTS.append(str(address))
                raise OSError(f"network disabled by train_demo_model.py: {address}")
        return original(self, address)

    socket.socket.connect = guarded  # type: ignore[method-assign]


def setup_offline(config_dir: Path, threads: int) -> None:
    """Environment that keeps ultralytics offline; must run before ultralytics is imported."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)  # settings.json + fonts land here
    os.environ["OMP_NUM_THREADS"] = str(threads)  # ultralytics would force 1 otherwise
    os.environ.setdefault("MPLBACKEND", "Agg")
    # Dataset checks want Arial.ttf and would otherwise try to download it: give them a local TTF.
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("matplotlib (an ultralytics dependency) is needed for its DejaVuSans.ttf")
    ttf = Path(next(iter(spec.submodule_search_locations))) / "mpl-data/fonts/ttf/DejaVuSans.ttf"
    font_dir = config_dir / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copyfile(ttf, font_dir / name)
    _block_network()


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class _Job:
    seed: int
    width: int
    height: int
    image: Path
    label: Path
    max_side: int  # 0: keep the rendered size
    quality: int


def _render_one(job: _Job) -> int:
    page = render_page(job.seed, job.width, job.height)
    img = page.image
    if job.max_side and max(img.size) > job.max_side:
        # Training images only need ~2x imgsz; smaller files load faster. Labels are normalized.
        k = job.max_side / max(img.size)
        img = img.resize((round(img.width * k), round(img.height * k)), Image.Resampling.LANCZOS)
    img.save(job.image, quality=job.quality)
    lines = [
        f"0 {(x + w / 2) / job.width:.6f} {(y + h / 2) / job.height:.6f} "
        f"{w / job.width:.6f} {h / job.height:.6f}"
        for x, y, w, h in page.boxes
    ]
    job.label.write_text("\n".join(lines) + ("\n" if lines else ""))
    return len(page.boxes)


def _jobs(
    root: Path,
    split: str,
    seeds: range,
    rng: np.random.Generator,
    wmin: int,
    wmax: int,
    max_side: int,
) -> list[_Job]:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    jobs = []
    for seed in seeds:
        w = int(rng.integers(wmin, wmax + 1))
        h = int(w * rng.uniform(1.25, 1.55))
        jobs.append(
            _Job(
                seed,
                w,
                h,
                root / "images" / split / f"{seed}.jpg",
                root / "labels" / split / f"{seed}.txt",
                max_side,
                int(rng.integers(75, 96)),
            )
        )
    return jobs


def render_dataset(root: Path, args: argparse.Namespace) -> dict[str, int]:
    """Train/val pages of TRAIN_WIDTHS; test pages from other seeds, TEST_WIDTHS, full size."""
    base = args.seed * 1_000_000  # disjoint page-seed ranges per split

    def rng(split: int) -> np.random.Generator:  # one stream per split: sizes don't shift
        return np.random.default_rng([args.seed, split])

    jobs = {
        "train": _jobs(
            root, "train", range(base, base + args.train), rng(0), *TRAIN_WIDTHS, 2 * args.imgsz
        ),
        "val": _jobs(
            root,
            "val",
            range(base + 200_000, base + 200_000 + args.val),
            rng(1),
            *TRAIN_WIDTHS,
            2 * args.imgsz,
        ),
        "test": _jobs(
            root, "test", range(base + 500_000, base + 500_000 + args.test), rng(2), *TEST_WIDTHS, 0
        ),
    }
    counts = {}
    # Rendering is pure PIL/numpy: fork workers before torch is imported.
    with ProcessPoolExecutor(max_workers=args.threads) as pool:
        for split, js in jobs.items():
            counts[split] = sum(pool.map(_render_one, js, chunksize=4))
    for split in ("val", "test"):  # val.yaml trains (train+val), test.yaml only evaluates
        (root / f"{split}.yaml").write_text(
            f"path: {root}\ntrain: images/train\nval: images/{split}\nnames:\n  0: {CLASSES[0]}\n"
        )
    return counts


def short_run_ema(trainer: Any) -> None:
    """Callback: an EMA horizon of ~2 epochs instead of ultralytics' tau=2000 updates.

    With only ~600 optimizer steps the default decay stays below 0.3, so the EMA barely averages
    and per-epoch val mAP swings wildly (0.9 -> 0.1 -> 0.9), making best.pt a lottery.
    """
    trainer.ema.decay = lambda updates: 0.98 * (1 - math.exp(-updates / 50))


# --------------------------------------------------------------------------- outputs


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    m, t = card["metrics"], card["training"]
    cmd = "scripts/train_demo_model.py"
    md = f"""# Model card: {NAME}

Demo detector for **illustrations on digitized book/manuscript pages** (one class,
`illustration`). It is a YOLOv8n (ultralytics {t["ultralytics"]}) trained from scratch on CPU in
about {t["seconds"] / 60:.0f} minutes (2 cores), so the service has a working model without
downloading one.

| file | what |
| --- | --- |
| `{NAME}.pt` | ultralytics weights (load with `YOLO(path)`) |
| `{NAME}.onnx` | the same network exported to ONNX (static {card["imgsz"]}x{card["imgsz"]} input) |
| `{NAME}.json` | machine-readable card: classes, imgsz, metrics, training facts |

## Training data
Synthetic pages only, rendered by `synthetic/pages.py` (PIL + numpy): tinted noisy paper
with stains, spine shadows and dark scan borders, one to three columns of text-like lines, and
0-3 non-overlapping illustrations per page (line drawings, diagrams, decorated initials and
head-pieces, hatched engravings, colour or sepia plates) of 8-70% of the page side.
{t["train_pages"]} training and {t["val_pages"]} validation pages (best-epoch selection),
{TRAIN_WIDTHS[0]}-{TRAIN_WIDTHS[1]} px wide, {t["epochs"]} epochs at imgsz {card["imgsz"]}.

## Held-out metrics
On {m["test_pages"]} test pages rendered from different seeds at larger sizes
({TEST_WIDTHS[0]}-{TEST_WIDTHS[1]} px wide, never seen in training):
**mAP50 = {m["mAP50"]:.3f}, mAP50-95 = {m["mAP50_95"]:.3f}**.

## Retrain
```
.venv/bin/python {cmd}         # defaults reproduce this model
.venv/bin/python {cmd} --help  # epochs, imgsz, page counts, seed, out/work dirs
```
The script runs fully offline (YOLO_OFFLINE, a temporary YOLO_CONFIG_DIR with local fonts,
integrations off, non-loopback connections blocked) and writes only into `--out-dir`.

## Limitations
- Trained only on synthetic pages: expect lower accuracy on real scans (photographs of bound
  books, marginalia, coloured text, handwriting, tables, stamps, bleed-through). Treat it as a
  demo / smoke-test model, not a production detector.
- Input is {card["imgsz"]} px on the long side: very small illustrations (< ~5% of the page side)
  and thin decorations can be missed; adjacent illustrations may be merged.
- One class only; no distinction between photos, drawings or ornaments.

## Adding a real model
Drop a `.pt` file plus a `.json` card with the same stem (same keys as `{NAME}.json`:
name, task, classes, imgsz, weights, metrics, ...) into a models folder listed in
`flask_config.yaml` under `models.dirs`. It then appears in `GET /models` and can be
selected with the `model` request parameter.
"""
    (out_dir / "MODEL_CARD.md").write_text(md)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=f"{NAME}-")) if temp else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    setup_offline(workdir / "yolo_config", args.threads)

    data = workdir / "data"
    counts = render_dataset(data, args)
    print(f"rendered pages into {data}: {counts} boxes", flush=True)

    import torch  # after setup_offline: ultralytics reads the environment at import time
    import ultralytics
    from ultralytics import YOLO, settings

    torch.set_num_threads(args.threads)
    settings.update(
        {
            "sync": False,
            "clearml": False,
            "comet": False,
            "dvc": False,
            "mlflow": False,
            "raytune": False,
            "tensorboard": False,
            "wandb": False,
            "vscode_msg": False,
            "openvino_msg": False,
            "runs_dir": str(workdir / "runs"),
            "datasets_dir": str(data),
            "weights_dir": str(workdir / "weights"),
        }
    )
    runs = workdir / "runs"

    model = YOLO(args.model)  # a yaml: built from scratch, nothing downloaded
    model.add_callback("on_pretrain_routine_end", short_run_ema)  # runs after the EMA is built
    t0 = time.perf_counter()
    model.train(
        data=str(data / "val.yaml"),
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        nbs=args.batch,  # no gradient accumulation: tiny data needs every optimizer step
        warmup_epochs=0,
        close_mosaic=max(1, args.epochs // 6),
        workers=0,
        device="cpu",
        cache="ram",
        plots=False,
        amp=False,
        seed=args.seed,
        project=str(runs),
        name="train",
        exist_ok=True,
        patience=args.epochs,
    )
    train_seconds = time.perf_counter() - t0
    best = Path(model.trainer.best)

    tuned = YOLO(str(best))
    metrics = tuned.val(
        data=str(data / "test.yaml"),
        split="val",
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        workers=0,
        plots=False,
        project=str(runs),
        name="test",
        exist_ok=True,
    )
    map50, map50_95 = float(metrics.box.map50), float(metrics.box.map)
    onnx_path = Path(
        tuned.export(format="onnx", imgsz=args.imgsz, dynamic=False, simplify=True, device="cpu")
    )

    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, out / f"{NAME}.pt")
    shutil.copyfile(onnx_path, out / f"{NAME}.onnx")
    card = {
        "name": NAME,
        "task": "detect",
        "classes": CLASSES,
        "imgsz": args.imgsz,
        "weights": f"{NAME}.pt",
        "onnx": f"{NAME}.onnx",
        "trained_on": (
            f"{args.train} synthetic digitized book pages (seed {args.seed}; text columns, "
            "paper noise, stains, scan borders; line drawings, diagrams, initials, engravings, "
            "plates) rendered by synthetic/pages.py; no real scans."
        ),
        "metrics": {
            "mAP50": round(map50, 4),
            "mAP50_95": round(map50_95, 4),
            "test_pages": args.test,
        },
        "training": {
            "epochs": args.epochs,
            "train_pages": args.train,
            "val_pages": args.val,
            "seconds": round(train_seconds, 1),
            "ultralytics": ultralytics.__version__,
            "torch": torch.__version__,
        },
    }
    (out / f"{NAME}.json").write_text(json.dumps(card, indent=2) + "\n")
    write_card(out, card)

    if temp and not args.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    sizes = {p.name: p.stat().st_size for p in sorted(out.glob(f"{NAME}.*"))}
    print(
        json.dumps(
            {
                "metrics": card["metrics"],
                "train_seconds": round(train_seconds, 1),
                "total_seconds": round(time.perf_counter() - t_start, 1),
                "files": sizes,
                "network_attempts": _NETWORK_ATTEMPTS,
            },
            indent=2,
        )
    )
    return 1 if _NETWORK_ATTEMPTS else 0


if __name__ == "__main__":
    raise SystemExit(main())
