"""`python -m bench.train`: the domain-shift benchmark's before/after table.

Renders the woodcut benchmark (model/jobs/train/benchmark.py: 40 training + 40 held-out pages),
splits the training pages as the `train` job does (val_fraction 0.2, seeded), fine-tunes the
shipped detector on this machine's device and prints the shipped and the fine-tuned model's
mAP50 / mAP50-95 on the 40 held-out pages, with the training time and the machine's load.
Then (unless --no-service) the same two models measured through the service, as a user gets
them: the fine-tuned weights imported into a real stack, an `evaluate` task and a `detect` task
on the held-out pages with each model (bench/train_service.py).
Writes bench/results/latest-train-<device>.md and .json (git history keeps earlier runs).
A report, never a test: it does not fail.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench import train_service
from model.jobs.train.benchmark import HELDOUT_PAGES, TRAIN_PAGES, build
from model.jobs.train.finetune import FinetuneConfig, finetune
from model.jobs.train.yolo_data import CLASS_NAMES, images_of, link_split, split_stems, write_yaml

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "model" / "weights" / "illustrations-demo.pt"
RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__)
    # 15: what fits 10 min on this 2-core CPU when it is shared (571 s measured under load 14-18).
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--imgsz", type=int, default=416)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="", help="cpu, cuda:0 (default: GPU if any)")
    p.add_argument("--base", type=Path, default=SHIPPED)
    p.add_argument("--workdir", type=Path, help="keep the pages and runs here (default: temp)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--train-pages", type=int, default=TRAIN_PAGES, help="fewer: a quick run")
    p.add_argument("--heldout-pages", type=int, default=HELDOUT_PAGES)
    p.add_argument(
        "--no-service",
        action="store_true",
        help="skip the check through the service (evaluate and detect tasks on a live stack)",
    )
    return p.parse_args(argv)


def table(rows: list[tuple[str, float, float]]) -> str:
    lines = ["| model | mAP50 | mAP50-95 |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {m50:.3f} | {m5095:.3f} |" for name, m50, m5095 in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    t0 = time.perf_counter()
    bench = build(
        work / "pages", seed=args.seed, train=args.train_pages, heldout=args.heldout_pages
    )
    render_s = time.perf_counter() - t0
    stems = [p.stem for p in images_of(bench.train)]
    train_stems, val_stems = split_stems(stems, args.val_fraction, args.seed)
    data = write_yaml(
        work / "data.yaml",
        link_split(bench.train, work / "split" / "train", train_stems),
        link_split(bench.train, work / "split" / "val", val_stems),
        CLASS_NAMES,
    )
    load_before = os.getloadavg()
    epochs: list[dict[str, float | None]] = []

    def on_epoch(done: int, total: int, map50: float | None) -> None:
        epochs.append({"epoch": done, "val_map50": map50, "s": time.perf_counter() - t0})
        print(f"epoch {done}/{total}: val mAP50 {map50}", flush=True)

    config = FinetuneConfig(
        epochs=args.epochs,
        imgsz=args.imgsz,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
    )
    result = finetune(args.base, data, bench.heldout_yaml, work, config, on_epoch)
    rows = [
        ("shipped (illustrations-demo)", result.base.map50, result.base.map50_95),
        ("fine-tuned", result.new.map50, result.new.map50_95),
    ]
    load_after = os.getloadavg()
    service: dict[str, dict] = {}
    if not args.no_service:
        service = train_service.verify(result.weights, "bench-finetuned", bench.heldout)
    gain = result.new.map50 - result.base.map50
    md = "\n".join(
        [
            f"# Domain-shift benchmark (woodcut pages), {time.strftime('%Y-%m-%d %H:%M UTC')}",
            "",
            f"{len(train_stems)} training + {len(val_stems)} validation pages (of "
            f"{len(stems)}), scored on {args.heldout_pages} held-out pages; "
            f"{result.epochs_run} epochs at imgsz {args.imgsz} on {result.device} "
            f"({args.threads} threads).",
            "",
            table(rows),
            "",
            f"- mAP50 gain: {gain:+.3f} (target >= +0.3, fine-tuned >= 0.8)",
            f"- training: {result.train_seconds:.0f} s ({result.train_seconds / 60:.1f} min; "
            f"target <= 10 min on 2 CPU cores); rendering {render_s:.0f} s",
            f"- load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f} "
            f"on {os.cpu_count()} cores (other work on the machine slows training)",
            f"- versions: {result.versions}",
        ]
        + (
            [
                "",
                "Through the service (the fine-tuned weights imported with `models add`; "
                f"evaluate: a dataset zip upload; detect: image uploads, scored at IoU "
                f"{train_service.IOU}; P/R/F1 at confidence {train_service.CONFIDENCE}):",
                "",
                train_service.table(service),
            ]
            if service
            else []
        )
    )
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    kind = "gpu" if result.device.startswith("cuda") else "cpu"
    if (args.train_pages, args.heldout_pages) != (TRAIN_PAGES, HELDOUT_PAGES):
        kind += "-reduced"  # a quick run never stands in for the benchmark's record
    (args.out / f"latest-train-{kind}.md").write_text(md + "\n")
    summary = result.summary() | {
        "epochs": epochs,
        "load": [load_before, load_after],
        "service": service,
        "pages": {"train": args.train_pages, "heldout": args.heldout_pages},
    }
    (args.out / f"latest-train-{kind}.json").write_text(json.dumps(summary, indent=1) + "\n")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
