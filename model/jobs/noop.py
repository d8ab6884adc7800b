"""A job that does nothing: the task goes through the API, the queue, the worker and the task
record like any other, but runs no inference. It measures (and lets operators probe) the
service's own round trip — see bench/ — without a model in the way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from model.jobs.items import ResultItem
from model.jobs.spec import JobSpec
from model.settings import JobLimits

if TYPE_CHECKING:
    from model.jobs.context import JobContext


class NoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NoopInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def run(ctx: JobContext) -> None:
    """Nothing to do: the runner records RUNNING and then SUCCEEDED around this call."""


SPEC = JobSpec(
    name="noop",
    summary="noop: runs nothing; measures the service's own round trip",
    params=NoopParams,
    input=NoopInput,
    run=run,
    item=ResultItem,  # it emits none
    docs="docs/api.md#keys-and-calls",
    limits=JobLimits(),
)
