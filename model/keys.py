"""API keys in SQLite, stored only as SHA-256 hashes.

Keys are 256-bit random tokens, so a fast hash is enough (no password stretching needed): the
database never holds anything that would let a reader call the API. A key's name is the owner of
its tasks, so rotating a key keeps its tasks visible to the new key.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

KEY_PREFIX = "sk_"

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
_COLUMNS = ("name", "hint", "created_at", "revoked_at", "admin", "max_queued", "rate_limit")


@dataclass(frozen=True)
class ApiKey:
    name: str
    hint: str
    created_at: float
    revoked_at: float | None
    admin: bool = False
    max_queued: int | None = None  # queued tasks this key may have at once (None: default)
    rate_limit: str | None = None  # flask-limiter string, e.g. "10/second" (None: default)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyStoreError(Exception):
    """A key operation that cannot be done (duplicate name, unknown name)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # A connection per call: cheap for SQLite, and safe across gunicorn threads.
        return sqlite3.connect(self.path, timeout=5)

    def create(
        self,
        name: str,
        admin: bool = False,
        max_queued: int | None = None,
        rate_limit: str | None = None,
    ) -> str:
        """Create a key and return it; this is the only time the plaintext exists."""
        key = new_key()
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO api_keys (name, key_hash, hint, created_at, admin, max_queued,"
                    " rate_limit) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        hash_key(key),
                        key[-4:],
                        time.time(),
                        int(admin),
                        max_queued,
                        rate_limit,
                    ),
                )
        except sqlite3.IntegrityError as exc:
            raise KeyStoreError(f"a key named {name!r} already exists") from exc
        return key

    def rotate(self, name: str) -> str:
        """Replace an active key's secret; the old one stops working at once."""
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

    def list(self) -> list[ApiKey]:
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [_row_to_key(row) for row in rows]

    def lookup(self, key: str) -> ApiKey | None:
        """The active key matching `key`, or None."""
        with self._connect() as db:
            row = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM api_keys "
                "WHERE key_hash = ? AND revoked_at IS NULL",
                (hash_key(key),),
            ).fetchone()
        return _row_to_key(row) if row else None

    def owner_of(self, key: str) -> str | None:
        found = self.lookup(key)
        return found.name if found else None


def _row_to_key(row: tuple) -> ApiKey:
    name, hint, created_at, revoked_at, admin, max_queued, rate_limit = row
    return ApiKey(name, hint, created_at, revoked_at, bool(admin), max_queued, rate_limit)
