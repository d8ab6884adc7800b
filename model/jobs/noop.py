"""A job that does nothing: the task goes through the API, the queue, the worker and the task
record like any other, but runs no inference. It measures (and lets operators probe) the
service's own round trip — see bench/ — without a model in the way.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# POST /task refuses a task without images or manifests, except for job types that need none.
NEEDS_INPUT = False


class NoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NoopInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# Distinct names in the OpenAPI document; the job-local names stay short.
Params = NoopParams
Input = NoopInput


def run(ctx: Any) -> None:
    """Nothing to do: the runner records RUNNING and then SUCCEEDED around this call."""
