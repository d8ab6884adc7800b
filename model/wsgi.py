"""Gunicorn entry point: `gunicorn model.wsgi:app`."""

from model import create_app

app = create_app()
