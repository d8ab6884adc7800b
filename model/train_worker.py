"""The `train-worker` program's Celery app: the worker's own (model.worker: same signals, same
run_job task) taking only the training queue, training.concurrency tasks at once.

Training has a program of its own so a training task never takes one of the detection worker's
places; run this program on a GPU host to train there (docs/training.md).
"""

from __future__ import annotations

from model.jobs.train import TRAIN_QUEUE
from model.worker import celery, settings

celery.conf.worker_concurrency = settings.training.concurrency  # -c on the command line wins
celery.conf.task_default_queue = TRAIN_QUEUE

__all__ = ["celery"]
