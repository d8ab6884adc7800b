"""API keys in SQLite, stored only as SHA-256 hashes.

Keys are 256-bit random tokens, so a fast hash is enough (no password stretching needed): the
database never holds anything that would let a reader call the API.
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
    revoked_at REAL
)
"""


@dataclass(frozen=True)
class ApiKey:
    name: str
    hint: str
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyStoreError(Exception):
    """A key operation that cannot be done (duplicate name, unknown name)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # A connection per call: cheap for SQLite, and safe across gunicorn threads.
        return sqlite3.connect(self.path, timeout=5)

    def create(self, name: str) -> str:
        """Create a key and return it; this is the only time the plaintext exists."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO api_keys (name, key_hash, hint, created_at) VALUES (?, ?, ?, ?)",
                    (name, hash_key(key), key[-4:], time.time()),
                )
        except sqlite3.IntegrityError as exc:
            raise KeyStoreError(f"a key named {name!r} already exists") from exc
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
                "SELECT name, hint, created_at, revoked_at FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [ApiKey(*row) for row in rows]

    def owner_of(self, key: str) -> str | None:
        """Name of the active key matching `key`, or None."""
        with self._connect() as db:
            row = db.execute(
                "SELECT name FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                (hash_key(key),),
            ).fetchone()
        return row[0] if row else None
