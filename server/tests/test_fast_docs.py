"""Fast layer: the docs a newcomer reads stay short, whole and true to the build.

The README fits on a few screens and shows the two commands the Makefile and CI really run;
every relative link in README.md, docs/*.md, bench/README.md and the job types' own pages
reaches a file (and a heading, when it names one); the module map in docs/design.md names every
module of the `model` package; the recipe of docs/adding-a-job.md names the job that proves it.
File reading only."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from model.jobs.registry import JOBS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# ...and each job type's own page, where its package keeps one (JobSpec.docs).
JOB_PAGES = {ROOT / spec.docs.partition("#")[0] for spec in JOBS.values()}
DOCS = sorted({*(ROOT / "docs").glob("*.md"), ROOT / "bench" / "README.md", *JOB_PAGES})
README_MAX_LINES = 250

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a link inside one is an example, not a link)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return "\n".join(out)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose(path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(_prose(path.read_text()))]


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_its_heading(doc: Path) -> None:
    broken = []
    for target in _links(doc):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, broken


def test_slug_follows_github() -> None:
    assert _slug("Deployment on one VM (Debian 12)") == "deployment-on-one-vm-debian-12"
    assert _slug("Fine-tuning (`train` job)") == "fine-tuning-train-job"
    assert _slug("Tasks side by side: processes, not threads") == (
        "tasks-side-by-side-processes-not-threads"
    )


def test_the_readme_fits_on_a_few_screens() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def _make_targets() -> dict[str, str]:
    """Makefile target -> its recipe."""
    targets: dict[str, str] = {}
    current = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([a-z][\w-]*):", line)
        if match:
            current = match.group(1)
            targets[current] = ""
        elif line.startswith("\t") and current:
            targets[current] += line.strip() + "\n"
    return targets


def test_the_readme_shows_the_two_commands_ci_and_make_run() -> None:
    """CI runs `make test` (.ci/run); `make run` starts the stack and prints a key: both are
    the README's set-up commands, each on a line of its own in a shell block."""
    ci = re.findall(r"^\s*make\s+([\w-]+)\s*$", (ROOT / ".ci" / "run").read_text(), re.M)
    assert ci == ["test"], ci
    targets = _make_targets()
    assert "-m pytest" in targets["test"], targets["test"]
    assert "-m model stack --print-key" in targets["run"], targets["run"]
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    shown = {line.split("#")[0].strip() for block in blocks for line in block.splitlines()}
    for target in ("run", *ci):
        assert f"make {target}" in shown, f"README lacks `make {target}` in a sh block"


def _module_map() -> str:
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("## Module map", 1)[1]
    return re.search(r"```\n(.*?)```", section, re.S).group(1)


def test_the_module_map_names_every_module() -> None:
    """Each module and package directly under model/ starts a line of the map; every package
    deeper down (api/templates/ aside: no code) is named in it, but a job type's package:
    the registry lists those (and GET /jobs, with each one's page), so a new one needs no line
    here."""
    package = ROOT / "model"
    shown = _module_map()
    starts = set(re.findall(r"^  (\S+)", shown, re.M))  # an entry, not a continued line
    missing = [
        f"{p.name}/" if p.is_dir() else p.name
        for p in package.iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").exists())
        and (f"{p.name}/" if p.is_dir() else p.name) not in starts
    ]
    deeper = [
        p.relative_to(package).as_posix()
        for p in package.glob("*/*/__init__.py")
        if f"{p.parent.name}/" not in shown
        and p.parent.relative_to(package).as_posix() not in {f"jobs/{name}" for name in JOBS}
    ]
    assert not missing + deeper, missing + deeper
    # ...and names nothing that is gone (the lines under `model/`, up to the next top folder).
    inside = shown.split("\n", 1)[1].split("\ntestkit/", 1)[0]
    gone = [n for n in set(re.findall(r"^  (\S+)", inside, re.M)) if not (package / n).exists()]
    assert not gone, gone


def test_the_readme_walk_through_imports_what_exists() -> None:
    """The walk-through's `python -c "from model... import ..."` lines name real code."""
    lines = re.findall(r'python -c "from ([\w.]+) import (\w+)', README.read_text())
    assert lines, "the walk-through makes its page with python -c"
    for module, name in lines:
        assert hasattr(importlib.import_module(module), name), (module, name)


# --- docs/adding-a-job.md: its proof is the commit it names -----------------------------------


def test_the_recipe_names_the_labels_job_and_its_files() -> None:
    """The worked example is a registered job of its own package (test_fast_labels.py runs it);
    the recipe shows the stat of the commit that added it, naming only these files."""
    text = (ROOT / "docs" / "adding-a-job.md").read_text()
    assert "labels" in JOBS and JOBS["labels"].docs == "model/jobs/labels/README.md"
    stat = re.search(r"```\n(.*?)```", text, re.S).group(1)
    files = re.findall(r"^ (\S+)\s+\|", stat, re.M)
    assert files == [
        "model/jobs/labels/README.md",
        "model/jobs/labels/__init__.py",
        "model/jobs/registry.py",
        "server/tests/test_fast_labels.py",
    ]
    assert all((ROOT / f).is_file() for f in files)


def test_the_worker_host_walk_through_is_where_test_deploy_says() -> None:
    """test_deploy.py follows docs/operations.md's worker-host steps 1-6 on one machine (slow):
    the steps it runs must still be that section's."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### Scaling out: worker hosts", 1)[1].split("\n### ", 1)[0]
    steps = [int(n) for n in re.findall(r"^# (\d)\. ", section, re.M)]
    assert steps == [1, 2, 3, 4, 5, 6], steps
    for command in (
        "(umask 077; ssh root@API '/srv/scriptorium/bin/scriptorium worker-secrets' > worker",
        "scripts/cloudvps_setup.sh --role worker --api-host API",
        "--worker-name gpu-2 --redis-secrets-from /root/worker.secrets",
        "/srv/scriptorium/bin/scriptorium workers",
        "/srv/scriptorium/current/scripts/release.sh --restart",
        '"setup: no change"',
    ):
        assert command in section, command
    deploy = (ROOT / "server" / "tests" / "test_deploy.py").read_text()
    assert 'docs/operations.md, "Scaling out: worker hosts", steps 4-6' in deploy
