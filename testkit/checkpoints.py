"""Checkpoints for the import tests, made offline: `python -m testkit.checkpoints OUTDIR` writes
- `detector.pt`: the shipped detector saved again by ultralytics (a YOLOv8 detection checkpoint
  as any training run leaves it, with another sha256 than the shipped file's);
- `classifier.pt`: an untrained YOLOv8 classification model (built from ultralytics' yaml);
- `truncated.pt`: the first half of detector.pt.

Run in a process of its own so the test process never imports torch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from model.inference.offline import configure_offline

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = PROJECT_ROOT / "model" / "weights" / "illustrations-demo.pt"


def make(out: Path) -> None:
    configure_offline(out / "ultralytics")
    from ultralytics import YOLO

    YOLO(str(SHIPPED)).save(str(out / "detector.pt"))
    YOLO("yolov8n-cls.yaml").save(str(out / "classifier.pt"))
    data = (out / "detector.pt").read_bytes()
    (out / "truncated.pt").write_bytes(data[: len(data) // 2])


def make_in_subprocess(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "testkit.checkpoints", str(out)], check=True, cwd=PROJECT_ROOT
    )
    return {name: out / f"{name}.pt" for name in ("detector", "classifier", "truncated")}


if __name__ == "__main__":
    make(Path(sys.argv[1]))
