"""API keys in SQLite, stored only as SHA-256 hashes.

Keys are 256-bit random tokens, so a fast hash is enough (no password stretching needed): the
database never holds anything that would let a reader call the API. A key's name is the owner of
its tasks, so rotating a key keeps its tasks visible to the new key.

Each key may also have a webhook signing secret (`whsec_<base64 of 32 random bytes>`, the
Standard Webhooks form). Unlike the API key it is kept as it is, not hashed: the service signs
every delivery with it (HMAC), so it must be able to read it back, and its holder must be shown
it (`python -m model keys webhook-secret NAME`). Encrypting it would need a key kept on the same
host, readable by the same processes, which protects nothing the file's permissions do not: the
database file is created 0600 (owner only), in the data dir, and the secret is never sent by the
API. Anyone who can read the file can forge deliveries but cannot call the API.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KEY_PREFIX = "sk_"
# How long the API process trusts a key it found active (KeyCache): a revoked key is refused
# from at most this long after `keys revoke` on.
KEY_CACHE_TTL_S = 0.5
WEBHOOK_SECRET_PREFIX = "whsec_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    admin INTEGER NOT NULL DEFAULT 0,
    max_queued INTEGER,
    rate_limit TEXT
)
"""
# Added to databases created before webhooks, and before running caps (ALTER TABLE on open).
_ADDED_COLUMNS = {
    "webhook_secret": "TEXT",
    "webhook_secret_previous": "TEXT",  # kept for the rotation grace period
    "webhook_secret_rotated_at": "REAL",
    "max_running": "INTEGER",
}
_COLUMNS = (
    "name",
    "hint",
    "created_at",
    "revoked_at",
    "admin",
    "max_queued",
    "rate_limit",
    "max_running",
)


@dataclass(frozen=True)
class ApiKey:
    name: str
    hint: str
    created_at: float
    revoked_at: float | None
    admin: bool = False
    max_queued: int | None = None  # queued tasks this key may have at once (None: default)
    rate_limit: str | None = None  # a `limits` string, e.g. "10/second" (None: default)
    max_running: int | None = None  # its tasks running at once (None: default, 0: no cap)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyStoreError(Exception):
    """A key operation that cannot be done (duplicate name, unknown name)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Owner only: it holds the webhook secrets as they are (see above). Created so before
        # SQLite opens it; SQLite gives its journal the same mode.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        if path.stat().st_mode & 0o077:  # made by a release before webhooks
            with contextlib.suppress(PermissionError):
                path.chmod(0o600)
        with self._connect() as db:
            db.execute(_SCHEMA)
            present = {row[1] for row in db.execute("PRAGMA table_info(api_keys)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in present:
                    db.execute(f"ALTER TABLE api_keys ADD COLUMN {column} {kind}")

    def _connect(self) -> sqlite3.Connection:
        # A connection per call: cheap for SQLite, and safe across gunicorn threads.
        return sqlite3.connect(self.path, timeout=5)

    def create(
        self,
        name: str,
        admin: bool = False,
        max_queued: int | None = None,
        rate_limit: str | None = None,
        max_running: int | None = None,
    ) -> str:
        """Create a key and return it; this is the only time the plaintext exists."""
        key = new_key()
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO api_keys (name, key_hash, hint, created_at, admin, max_queued,"
                    " rate_limit, max_running) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        hash_key(key),
                        key[-4:],
                        time.time(),
                        int(admin),
                        max_queued,
                        rate_limit,
                        max_running,
                    ),
                )
        except sqlite3.IntegrityError as exc:
            raise KeyStoreError(f"a key named {name!r} already exists") from exc
        return key

    def rotate(self, name: str) -> str:
        """Replace an active key's secret; the old one stops working within KEY_CACHE_TTL_S."""
        key = new_key()
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE api_keys SET key_hash = ?, hint = ? WHERE name = ? AND revoked_at IS NULL",
                (hash_key(key), key[-4:], name),
            )
        if cursor.rowcount == 0:
            raise KeyStoreError(f"no active key named {name!r}")
        return key

    def revoke(self, name: str) -> None:
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (time.time(), name),
            )
        if cursor.rowcount == 0:
            raise KeyStoreError(f"no active key named {name!r}")

    def webhook_secret(self, name: str, rotate: bool = False) -> tuple[str, bool]:
        """An active key's webhook signing secret, created if it has none; `rotate` replaces it
        (the old one still signs for the grace period). Returns (secret, whether it is new)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT webhook_secret FROM api_keys WHERE name = ? AND revoked_at IS NULL",
                (name,),
            ).fetchone()
            if row is None:
                raise KeyStoreError(f"no active key named {name!r}")
            current = row[0]
            if current and not rotate:
                return current, False
            secret = new_webhook_secret()
            db.execute(
                "UPDATE api_keys SET webhook_secret = ?, webhook_secret_previous = ?,"
                " webhook_secret_rotated_at = ? WHERE name = ?",
                (secret, current, time.time() if current else None, name),
            )
        return secret, True

    def signing_secrets(self, name: str, grace_s: float, now: float | None = None) -> list[str]:
        """What deliveries for `name`'s tasks are signed with: its secret, and the one it
        replaced while within `grace_s` of the rotation. Empty: no secret (or no such key)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT webhook_secret, webhook_secret_previous, webhook_secret_rotated_at"
                " FROM api_keys WHERE name = ?",
                (name,),
            ).fetchone()
        if row is None or not row[0]:
            return []
        current, previous, rotated_at = row
        now = time.time() if now is None else now
        recent = previous and rotated_at is not None and now - rotated_at < grace_s
        return [current, previous] if recent else [current]

    def has_webhook_secret(self, name: str) -> bool:
        with self._connect() as db:
            row = db.execute(
                "SELECT webhook_secret IS NOT NULL FROM api_keys WHERE name = ?", (name,)
            ).fetchone()
        return bool(row and row[0])

    def list(self) -> list[ApiKey]:
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [_row_to_key(row) for row in rows]

    def lookup(self, key: str) -> ApiKey | None:
        """The active key matching `key`, or None."""
        return self.lookup_hash(hash_key(key))

    def lookup_hash(self, key_hash: str) -> ApiKey | None:
        with self._connect() as db:
            row = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM api_keys "
                "WHERE key_hash = ? AND revoked_at IS NULL",
                (key_hash,),
            ).fetchone()
        return _row_to_key(row) if row else None

    def is_active(self, name: str) -> bool:
        """Whether a key of this name exists and is not revoked (share links die with it)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM api_keys WHERE name = ? AND revoked_at IS NULL", (name,)
            ).fetchone()
        return row is not None

    def owner_of(self, key: str) -> str | None:
        found = self.lookup(key)
        return found.name if found else None


class KeyCache:
    """Active keys as the key database showed them a moment ago, for the API process.

    Opening SQLite and reading the key was the largest single cost of an authenticated request
    (bench/README.md, "Where a status call's time goes"). A key found active is trusted for
    `ttl_s` (under a second), so a revoked or rotated key is refused from at most `ttl_s` after
    the change on; a key not found is never remembered (a newly created key works at once, and
    random guesses cannot fill the cache). At most `max_entries` keys are held.
    """

    def __init__(
        self,
        store: KeyStore,
        ttl_s: float = KEY_CACHE_TTL_S,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._found: dict[str, tuple[ApiKey, float]] = {}  # key hash -> (key, trusted until)

    def lookup(self, key: str) -> ApiKey | None:
        digest = hash_key(key)
        now = self.clock()
        hit = self._found.get(digest)
        if hit is not None and now < hit[1]:
            return hit[0]
        found = self.store.lookup_hash(digest)
        if found is None:
            self._found.pop(digest, None)
            return None
        if len(self._found) >= self.max_entries:
            self._found.clear()  # rare (more live keys than entries): start over, stay bounded
        self._found[digest] = (found, now + self.ttl_s)
        return found


def _row_to_key(row: tuple) -> ApiKey:
    name, hint, created_at, revoked_at, admin, max_queued, rate_limit, max_running = row
    return ApiKey(
        name, hint, created_at, revoked_at, bool(admin), max_queued, rate_limit, max_running
    )
