"""Job types. Each module offers `Params` (pydantic), `Input` and `run(ctx)`; torch-free so the
HTTP side can validate requests with the same models the worker runs."""

from __future__ import annotations

import importlib
from types import ModuleType

JOB_TYPES = {
    "detect": "model.jobs.detect",
    "noop": "model.jobs.noop",
    "similarity": "model.jobs.similarity",
}


class JobCancelled(Exception):
    """Raised inside a job when its cancel flag is seen."""


class JobFailed(Exception):
    """A job cannot go on (its input as a whole is unusable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def job_module(job_type: str) -> ModuleType:
    return importlib.import_module(JOB_TYPES[job_type])
