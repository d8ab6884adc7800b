"""The `live` mark: tests that start real processes — a stack under supervisord (redis, the
Celery worker, gunicorn, nginx, spiped), an installation, a browser, an image server of its
own, the deploy scripts, the CLI — or load torch. `make test-fast` (pytest -m "not live")
leaves them out: it runs in seconds.

Wired by server/tests/conftest.py's hooks:
- a test is marked live by itself when any fixture it uses, directly or not, is decorated
  @starts_processes, so a test that asks for `stack` needs no mark of its own;
- a test that starts such processes in its body carries @pytest.mark.live;
- and a test that starts a stack without the mark fails (require_live), in the fast layer as
  in the whole suite, before any process starts.

The fast layer's one bare redis-server (conftest `bare_redis`) is no stack: it stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

MARK = "live"
_ATTRIBUTE = "starts_processes"
WHOLE_MODULE = re.compile(rf"^pytestmark = \[?\s*pytest\.mark\.{MARK}\b", re.MULTILINE)

F = TypeVar("F", bound=Callable)

# Whether the running test is marked live; None outside pytest (bench, a shell): allowed.
_running_live: bool | None = None


class NotLive(RuntimeError):
    """A test not marked live tried to start a stack."""


def starts_processes(fixture: F) -> F:
    """Put under @pytest.fixture: every test that uses this fixture is marked live."""
    setattr(fixture, _ATTRIBUTE, True)
    return fixture


def require_live(what: str) -> None:
    """Raise NotLive if the running test is not marked live (called before starting `what`)."""
    if _running_live is False:
        raise NotLive(
            f"this test starts {what} but is not marked live: add @pytest.mark.live, or get it"
            " from a fixture decorated @starts_processes (testkit/live.py)"
        )


def _uses_live_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        getattr(definition.func, _ATTRIBUTE, False)
        for definitions in info.name2fixturedefs.values()
        for definition in definitions
    )


def live_module(path: Path, config: pytest.Config) -> bool | None:
    """With -m "not live": True for a test module marked live as a whole (`pytestmark =
    pytest.mark.live`, or a list that starts with it), which need not even be imported (each
    xdist worker would import it again, heavy imports and all); None (no opinion) otherwise."""
    if config.getoption("markexpr") != f"not {MARK}" or not path.name.startswith("test_"):
        return None
    return WHOLE_MODULE.search(path.read_text()) is not None or None


def mark_live(items: list[pytest.Item]) -> None:
    """At collection, before -m deselects by marks: mark the tests that use a live fixture."""
    for item in items:
        if _uses_live_fixture(item):
            item.add_marker(MARK)


def entering(item: pytest.Item) -> None:
    """Before any fixture of `item` is set up: whether it may start a stack."""
    global _running_live
    _running_live = item.get_closest_marker(MARK) is not None
