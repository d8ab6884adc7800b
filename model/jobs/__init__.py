"""Job types: each module declares one (`SPEC`, model/jobs/spec.py) with its params and input
models, torch-free so the HTTP side validates requests with the same models the worker runs;
model/jobs/registry.py lists them."""

from __future__ import annotations


class JobCancelled(Exception):
    """Raised inside a job when its cancel flag is seen."""


class JobFailed(Exception):
    """A job cannot go on (its input as a whole is unusable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UploadMissing(Exception):
    """An upload is gone: its TTL ran out (the task waited longer than allowed) or it was never
    stored (model/uploads.py keeps them). The item fails with this code; the task goes on."""

    code = "upload_missing"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
