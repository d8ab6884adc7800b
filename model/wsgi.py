"""Gunicorn entry point: `gunicorn model.wsgi:app`."""

from model.api.app import create_app

app = create_app()
