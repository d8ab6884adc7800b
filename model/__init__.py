"""Scriptorium: a task service for vision jobs on digitized documents.

The HTTP side is `model.api.app.create_app()` (Flask, never torch); the worker is `model.worker`
(Celery, the only importer of torch); `model.inference` loads models on a bare GPU box without
Flask. This package itself imports nothing.
"""

__version__ = "0.1.0"
