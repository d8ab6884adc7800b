"""Whom a task that publishes a model (train) publishes it for (docs/models.md, "Who may use a
model"), decided at submit.

`params.visibility`: `key` (this key alone) or `everyone`, which only an admin key may ask;
left out, an admin key's model is everyone's and any other key's its own. The resolved value is
stored in the task's params: worker hosts have no key database, they read it there. A key's own
models are capped (catalog.Quota): a key that already owns as many (or as many bytes) as it may
is refused here, before minutes of training; the worker checks again in the transaction that
publishes (another task of the key may have published meanwhile).
"""

from __future__ import annotations

from pydantic import BaseModel

from model.api.errors import ApiError
from model.api.meta import catalog
from model.api.services import Services
from model.inference.catalog import ModelStoreError, Quota

# A key at its model count waits for nothing (it must remove one): 429 like the other per-key
# caps; at its byte budget 413, the size of what it would store.
QUOTA_STATUS = {"too_many_models": 429, "model_storage_exceeded": 413}


def for_key(svc: Services, params: BaseModel, owner: str, admin: bool) -> BaseModel:
    """The params with `visibility` resolved for this key; ApiError for what it may not do."""
    wanted = getattr(params, "visibility", None)
    if wanted == "everyone" and not admin:
        raise ApiError(
            403,
            "forbidden",
            "visibility 'everyone' needs an admin key; this key's models are its own ('key')",
        )
    visibility = wanted or ("everyone" if admin else "key")
    if visibility == "key":
        try:
            Quota.of(svc.settings).check(catalog(svc).cards().values(), owner)
        except ModelStoreError as exc:
            raise ApiError(QUOTA_STATUS[exc.code], exc.code, exc.message) from exc
    return params.model_copy(update={"visibility": visibility})
