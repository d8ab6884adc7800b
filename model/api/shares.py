"""Share links: a key holder lets people without a key read one task's results — a viewer such as
Mirador cannot send X-API-Key, and a colleague should not get the key itself.

    POST   /result/<id>/shares             {"ttl_s": 86400}  -> 201 {token, share_id, URLs...}
    GET    /result/<id>/shares                                -> the task's live links
    DELETE /result/<id>/shares/<share_id>                     -> 204, dead from the next request

A link is `?token=<token>` on that task's result routes (model/api/results.py) and nowhere else:
/status, /tasks, /task, another task's results all still want a key. It is read-only, expires
(`share.default_ttl_s`, at most `share.max_ttl_s`, never after the result itself) and can be
revoked. Its responses carry `Access-Control-Allow-Origin: *`: public by design.

What a link cannot outlive or outgrow: the keys behind it (the task's owner, the key that made
it: revoking either ends it, checked at each read), its budgets (`share.rate` per link and
`share.client_rate` per client, whatever headers come with it), the caps on live links
(`share.max_per_task`, `share.max_per_key`: 409). What it shows: the result less source URL
queries and the worker's identity (model/outputs/redact.py).

Why random tokens kept in Redis rather than signed ones (itsdangerous-style HMAC): revoking a
link needs state on the server anyway (a signed token is valid until it expires unless a
deny-list says otherwise), and once there is state, a random token is the simpler and safer half:
256 bits with nothing to derive it from, no signing secret to generate, protect and rotate (a
leaked secret would forge links to every task), expiry and revocation are Redis's own (EXPIREAT,
DEL), and listing a task's links is a read. Only the token's SHA-256 is stored, like API keys: a
copy of Redis does not hand out links. The cost is one Redis read per shared request.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from flask import Response, g, jsonify, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis import Redis

from model.api.admission import read_json_body
from model.api.auth import SECURITY, refuse, require_key
from model.api.cors import mark_public
from model.api.errors import COMMON_RESPONSES, ApiError, ErrorResponse, describe_validation_error
from model.api.limits import limit_share_read
from model.api.schemas import TaskPath, timestamp
from model.api.services import services
from model.api.tasks import ERRORS, _owned_record
from model.jobs.fields import bounded_integer
from model.keyspace import owner_shares_key, share_key, task_shares_key
from model.outputs.annotations import ResultLinks
from model.tasks.record import TaskRecord

TOKEN_BYTES = 32
SHARE_ID_PATTERN = r"^[0-9a-f]{32}$"


def share_id_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class TooManyShares(Exception):
    """The task, or the key making the link, has as many live links as allowed."""

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(scope)
        self.scope = scope
        self.limit = limit


# A new link, once the live links of its task and of the key making it are counted (expired
# ones leave both indexes first): the count and the write in one step, so parallel creates
# cannot pass the cap together. KEYS: the share, the task's index, the key's index; ARGV: share
# id, expires at, now, cap per task, cap per key, then field, value pairs. Returns 'ok', or
# which cap refused it.
_CREATE = """
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 'task' end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return 'key' end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
local expire_at = math.floor(tonumber(ARGV[2])) + 1
redis.call('EXPIREAT', KEYS[1], expire_at)
for i = 2, 3 do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1])
  local last = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
  redis.call('EXPIREAT', KEYS[i], math.floor(tonumber(last[2])) + 1)  -- lives as its links
end
return 'ok'
"""


@dataclass(frozen=True)
class Share:
    id: str
    task_id: str
    owner: str  # the task's owner
    created_at: float
    expires_at: float
    created_by: str = ""  # the key that made it (links made before this was kept: the owner)

    def describe(self) -> dict:
        return {
            "share_id": self.id,
            "task_id": self.task_id,
            "created_at": timestamp(self.created_at).isoformat(),
            "expires_at": timestamp(self.expires_at).isoformat(),
        }

    @property
    def keys(self) -> set[str]:
        """The keys this link depends on: revoking either ends it."""
        return {self.owner, self.created_by or self.owner}


class ShareStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._create = redis.register_script(_CREATE)

    def create(
        self,
        task_id: str,
        owner: str,
        expires_at: float,
        created_by: str | None = None,
        caps: tuple[int, int] = (2**31, 2**31),
    ) -> tuple[str, Share]:
        """A new link (raises TooManyShares beyond `caps`: per task, per key making it)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        created_by = created_by or owner
        share = Share(share_id_of(token), task_id, owner, time.time(), expires_at, created_by)
        fields = {
            "task_id": task_id,
            "owner": owner,
            "created_by": share.created_by,
            "created_at": share.created_at,
            "expires_at": expires_at,
        }
        outcome = self._create(
            keys=[
                share_key(share.id),
                task_shares_key(task_id),
                owner_shares_key(share.created_by),
            ],
            args=[
                share.id,
                expires_at,
                share.created_at,
                *caps,
                *(x for kv in fields.items() for x in kv),
            ],
        )
        if outcome != "ok":
            raise TooManyShares(outcome, caps[0] if outcome == "task" else caps[1])
        return token, share

    def lookup(self, token: str) -> Share | None:
        if not token or len(token) > 128:
            return None
        return self._get(share_id_of(token))

    def _get(self, share_id: str) -> Share | None:
        data = self.redis.hgetall(share_key(share_id))
        if not data or float(data["expires_at"]) <= time.time():
            return None
        return Share(
            share_id,
            data["task_id"],
            data["owner"],
            float(data["created_at"]),
            float(data["expires_at"]),
            data.get("created_by") or data["owner"],
        )

    def of_task(self, task_id: str) -> list[Share]:
        ids = self.redis.zrangebyscore(task_shares_key(task_id), time.time(), "+inf")
        return [s for s in (self._get(i) for i in ids) if s is not None and s.task_id == task_id]

    def revoke(self, task_id: str, share_id: str) -> bool:
        share = self._get(share_id)
        if share is None or share.task_id != task_id:
            return False
        with self.redis.pipeline() as pipe:
            pipe.delete(share_key(share_id))
            pipe.zrem(task_shares_key(task_id), share_id)
            pipe.zrem(owner_shares_key(share.created_by), share_id)
            pipe.execute()
        return True


def share_store() -> ShareStore:
    return ShareStore(services().redis)


def authorize_result_read() -> None:
    """before_request of the result routes: an API key, or a share link of this very task.
    A bad link counts against the failed-authentication budget, like a bad key."""
    token = request.args.get("token")
    if token is None:
        require_key()
        return
    mark_public()  # its errors too: a viewer on any site must be able to read why
    svc = services()
    # Counted before the link is looked up, per client and per link, whatever key or
    # Authorization header comes with it: a link is no way around the rate limits.
    limit_share_read(svc.settings.share, share_id_of(token))
    share = share_store().lookup(token)
    if share is None or share.task_id != (request.view_args or {}).get("task_id"):
        raise refuse("invalid, expired or revoked share link")
    # A link lives no longer than the keys behind it: revoking a (stolen) key ends its links.
    if not all(svc.keys.is_active(name) for name in share.keys):
        raise refuse("invalid, expired or revoked share link")
    g.owner = share.owner
    g.share_token = token


# --- the key holder's routes --------------------------------------------------------------------

api = APIBlueprint(
    "shares",
    __name__,
    abp_tags=[Tag(name="sharing", description="Read-only, expiring links to one task's results")],
    abp_security=SECURITY,
    abp_responses=COMMON_RESPONSES,
)
api.before_request(require_key)


class ShareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    ttl_s: bounded_integer(60) | None = Field(  # type: ignore[valid-type]
        None, description="Seconds the link works (default share.default_ttl_s)"
    )


class SharePath(TaskPath):
    share_id: str = Field(pattern=SHARE_ID_PATTERN)


def share_links(record: TaskRecord, token: str) -> dict:
    """The URLs a share link opens: the JSON result and, per manifest, what a viewer loads."""
    svc = services()
    links = ResultLinks.of_task(svc.settings.http.public_base_url(), record.id, token)
    manifests = (record.provenance or {}).get("manifests", [])
    kept = svc.store.kept_manifest_indices(record.id)
    return {
        "result_url": links.result("json"),
        "manifests": [
            {
                "index": m["index"],
                "label": m.get("label", ""),
                "manifest_url": links.manifest(m["index"]) if m["index"] in kept else None,
                "annotations_url": links.manifest_page(m["index"]),
            }
            for m in manifests
        ],
    }


@api.post(
    "/result/<task_id>/shares",
    responses={201: None, 409: ErrorResponse, **ERRORS},
    openapi_extensions={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": ShareRequest.model_json_schema()}},
        }
    },
)
def create_share(path: TaskPath) -> Response:
    """A read-only link to this task's results, for people and viewers without a key."""
    svc = services()
    record = _owned_record(svc, path.task_id)
    # No body (or an empty one) takes the defaults; a body must be a JSON object, as documented.
    limits = svc.settings.limits
    body_bytes = read_json_body(limits.max_json_body_bytes, limits.max_json_depth)
    raw = request.get_json(silent=True) if body_bytes else {}
    if not isinstance(raw, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object (or no body)")
    try:
        body = ShareRequest.model_validate(raw)
    except ValidationError as exc:
        message, details = describe_validation_error(exc)
        raise ApiError(422, "invalid_request", message, details=details) from exc
    settings = svc.settings.share
    ttl_s = min(body.ttl_s or settings.default_ttl_s, settings.max_ttl_s)
    expires_at = time.time() + ttl_s
    if record.expires_at is not None:  # never outlives the result it opens
        expires_at = min(expires_at, record.expires_at)
    caps = (settings.max_per_task, settings.max_per_key)
    try:
        token, share = share_store().create(record.id, record.owner, expires_at, g.owner, caps)
    except TooManyShares as exc:
        whose = "this task" if exc.scope == "task" else f"the key {g.owner!r}"
        raise ApiError(
            409,
            "too_many_shares",
            f"{whose} already has {exc.limit} live share links; revoke some "
            "(DELETE /result/<id>/shares/<share_id>) or wait for them to expire",
        ) from exc
    response = jsonify({**share.describe(), "token": token, **share_links(record, token)})
    response.status_code = 201
    return response


@api.get("/result/<task_id>/shares", responses={200: None, **ERRORS})
def list_shares(path: TaskPath) -> Response:
    """The task's links that still work (their tokens are not kept: only shown at creation)."""
    record = _owned_record(services(), path.task_id)
    return jsonify({"shares": [s.describe() for s in share_store().of_task(record.id)]})


@api.delete("/result/<task_id>/shares/<share_id>", responses={204: None, **ERRORS})
def revoke_share(path: SharePath) -> Response:
    """Revoke a link: refused from the next request on."""
    record = _owned_record(services(), path.task_id)
    if not share_store().revoke(record.id, path.share_id):
        raise ApiError(404, "not_found", "no such share link for this task")
    return Response(status=204)
