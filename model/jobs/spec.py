"""The declaration of a job type (`JobSpec`): its request models, how its input becomes task
inputs, what it refuses, its default limits, its run function and the result items it emits.
Each job module declares one `SPEC`; model/jobs/registry.py lists them.

Torch-free and light: the HTTP process imports it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from model.jobs.contract import TaskInput
from model.jobs.items import ResultItem
from model.settings import JobLimits, Settings

if TYPE_CHECKING:
    from model.jobs.context import JobContext


def _no_inputs(_input: Any) -> list[TaskInput]:
    return []


def _accept(_input: Any, _inputs: list[TaskInput], _settings: Settings) -> None:
    return None


@dataclass(frozen=True)
class JobSpec:
    name: str
    summary: str  # one line: the request's `type` description in the OpenAPI document
    params: type[BaseModel]
    input: type[BaseModel]
    # The job's work in the worker (imports its heavy code itself).
    run: Callable[[JobContext], None]
    # What it emits, one per result item: the result schema of the OpenAPI document is the
    # union of the registry's item models.
    item: type[ResultItem]
    # Where its documentation is, from the repository root (`docs/api.md#crops-...`, or a page in
    # its own package: `model/jobs/labels/README.md`). GET /jobs lists it beside the summary.
    docs: str = ""
    # The request's `input` -> the task's typed inputs (uploads are added by the API).
    task_inputs: Callable[[Any], list[TaskInput]] = _no_inputs
    # Raises InputRejected for what the job cannot take (given every input, uploads too).
    check: Callable[[Any, list[TaskInput], Settings], None] = _accept
    input_required: bool = False  # `input` must be in the request (no default)
    params_required: bool = False  # `params` too (a param without a default: train's `name`)
    uploads: bool = False  # images/manifests may be uploaded (multipart)
    # Types of another task of the same key its `task` input may name; the API refuses one
    # that is not such a task, finished, when the request comes (404 unknown, 422 unusable).
    source_task_types: tuple[str, ...] = ()
    # Params naming a model -> the task of the models they may name (checked at submit).
    model_fields: dict[str, str] = field(default_factory=dict)
    # Those a task may leave out that the job then fills with a model of its own choosing
    # (cluster's `model`: motif-embed), not one of the service's defaults every worker loads
    # (models.default, similarity.embed_model): checked at submit and routed as if named.
    model_defaults: dict[str, str] = field(default_factory=dict)
    # Its default limits; flask_config.yaml `jobs.<name>` (or SCRIPTORIUM_JOBS__<NAME>__...)
    # overrides any of them, and need not list the type at all.
    limits: JobLimits = field(default_factory=JobLimits)
    # How many result items the task has before the worker expands its inputs.
    initial_total: Callable[[list[TaskInput]], int] = lambda _inputs: 0
    # The request's `input` in the OpenAPI document when the API asks more than the model shows
    # (e.g. at least one URL): given the model's $ref, a JSON schema.
    input_schema: Callable[[str], dict[str, Any]] | None = None
    # A queue of its own (the train job's: its own worker program and concurrency), instead of
    # the default queue or the named model's.
    queue: str | None = None
    # How many tasks of this type one key may have queued or running at once (None: no limit).
    active_per_key: Callable[[Settings], int] | None = None
    # Its tasks publish a model (train): params.visibility says for whom; the API resolves it
    # for the key and refuses, at submit, what the key may not publish (model/api/publishing.py).
    publishes_model: bool = False

    def models_of(self, params: Mapping[str, Any]) -> dict[str, str | None]:
        """Each model param's model as the task will run it: the one named, else the job's own
        default (None: the service's default, models.default or similarity.embed_model)."""
        return {
            name: params.get(name) or self.model_defaults.get(name) for name in self.model_fields
        }

    def limits_in(self, settings: Settings) -> JobLimits:
        """Its own limits, with those configured for this type (flask_config.yaml jobs.<name>)
        instead: a file or variable that names one limit leaves the others as the job's."""
        configured = settings.jobs.get(self.name)
        if configured is None:
            return self.limits
        return self.limits.model_copy(update=configured.model_dump(exclude_unset=True))
