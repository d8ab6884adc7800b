"""Keep ultralytics off the network: call before importing it (worker and training script)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

INTEGRATIONS_OFF = {
    "sync": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "hub": False,
    "mlflow": False,
    "neptune": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
}


def configure_offline(config_dir: Path) -> None:
    """Settings in our own folder, offline mode, and local fonts so no download is attempted."""
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    fonts = config_dir / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    import matplotlib  # ultralytics depends on it; it ships DejaVuSans

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (fonts / name).exists():
            shutil.copy(dejavu, fonts / name)
    from ultralytics import settings

    settings.update({k: v for k, v in INTEGRATIONS_OFF.items() if k in settings})
