"""The `live` mark (testkit/live.py) keeps every test that starts a stack out of the fast layer:
a test that uses a stack-starting fixture is marked by itself, one that starts a stack in its
body without the mark fails before any process starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit import live
from testkit.stack import start_stack

pytest_plugins = ("pytester",)

# A suite of its own, with this suite's hooks and stack-starting fixtures.
CONFTEST = """
from server.tests.conftest import (
    browser, checkpoints, iiif_stack, level1_server, stack,
    pytest_collection_modifyitems, pytest_runtest_setup,
)
"""

TESTS = """
import pytest
from testkit.stack import start_stack

def test_uses_stack(stack): pass
def test_uses_a_client_of_the_iiif_stack(iiif_api): pass
def test_uses_browser(browser): pass
def test_uses_checkpoints(checkpoints): pass
def test_uses_level1_server(level1_server): pass

@pytest.fixture
def iiif_api(iiif_stack): pass

@pytest.mark.live
def test_marked(tmp_path): start_stack(tmp_path)

def test_plain(): pass
def test_starts_a_stack_unmarked(tmp_path): start_stack(tmp_path)
"""


# Plugins the inner session needs not load (seconds of imports).
QUIET = ("-p", "no:cacheprovider", "-p", "no:schemathesis", "-p", "no:hypothesispytest")


def test_the_fast_layer_leaves_out_every_test_that_starts_a_stack(
    pytester: pytest.Pytester, request: pytest.FixtureRequest
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=TESTS)
    try:
        result = pytester.runpytest_inprocess("-m", "not live", *QUIET)
    finally:
        live.entering(request.node)  # the inner session's last test set it
    result.assert_outcomes(passed=1, failed=1, deselected=6)
    result.stdout.fnmatch_lines(["*NotLive: this test starts a stack (supervisord)*"])
    assert not list(pytester.path.glob("**/stack.out")), "a stack was started"


def test_a_stack_started_by_a_test_not_marked_live_fails_before_it_starts(
    tmp_path: Path,
) -> None:
    with pytest.raises(live.NotLive, match="not marked live"):
        start_stack(tmp_path / "stack")
    assert not (tmp_path / "stack").exists()


# A module whose every test is live says so at its top: the fast layer does not even import it
# (its imports would cost every xdist worker their seconds). Both spellings of the mark count.
NEVER_IMPORTED = """
import pytest
{mark}
raise RuntimeError("the fast layer imported a module marked live")

def test_live(): pass
"""


def test_the_fast_layer_does_not_import_a_module_marked_live_as_a_whole(
    pytester: pytest.Pytester, request: pytest.FixtureRequest
) -> None:
    pytester.makeconftest("from server.tests.conftest import pytest_ignore_collect\n")
    pytester.makeini("[pytest]\nmarkers = live: starts processes\n")
    pytester.makepyfile(
        test_one=NEVER_IMPORTED.format(mark="pytestmark = pytest.mark.live"),
        test_list=NEVER_IMPORTED.format(
            mark="pytestmark = [\n"
            "    pytest.mark.live,\n    pytest.mark.skipif(False, reason='-'),\n]"
        ),
        test_fast="def test_fast(): pass\n",
    )
    result = pytester.runpytest_inprocess("-m", "not live", *QUIET)
    result.assert_outcomes(passed=1)
    # The whole suite imports them, and their tests are live.
    result = pytester.runpytest_inprocess("-m", "live", *QUIET)
    result.assert_outcomes(errors=2, deselected=1)
