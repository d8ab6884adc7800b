"""The services views use: the process's (model/services.py), kept in `app.extensions`."""

from __future__ import annotations

from flask import current_app

from model.services import Services


def services() -> Services:
    return current_app.extensions["scriptorium"]
