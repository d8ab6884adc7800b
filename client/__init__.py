"""A command-line client for the Scriptorium API: `python -m model client ...`.

Light on purpose, for front-end hosts: it needs only `requests` and `rich` (see
requirements-client.txt) and imports nothing of the service itself (no Flask, pydantic, torch,
PIL). `model.cli` hands `client` to `client.commands.main` before importing anything else.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from client.commands import main as run

    return run(argv)
