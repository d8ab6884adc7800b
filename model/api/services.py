"""The objects views use, built once per app and kept in `app.extensions`."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app
from redis import Redis

from model.keys import KeyCache, KeyStore
from model.settings import Settings
from model.tasks.store import TaskStore
from model.uploads import UploadStore


@dataclass
class Services:
    settings: Settings
    redis: Redis
    store: TaskStore
    uploads: UploadStore  # binary-safe: uploaded files, read by workers on any host
    keys: KeyStore
    celery: Celery
    key_cache: KeyCache  # what authentication reads: keys found a moment ago, else `keys`


def services() -> Services:
    return current_app.extensions["scriptorium"]
