"""No import cycles between the parts of `model/`: its packages (api, jobs, sources, ...) and its
top-level modules (settings, store, celery_app, ...), each taken as one unit. Every import
counts, those inside functions too (they hide a cycle from the interpreter, not from a reader).

A cycle is listed with the import lines that close it, e.g. `model.settings -> model.jobs
(model/settings.py:449 imports model.jobs.registry)`: move the code to where it belongs rather
than hiding the import. Inside one package, a job's spec may import its own run module lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

from testkit.stack import PROJECT_ROOT

Edges = dict[str, dict[str, str]]  # unit -> unit it imports -> the first import line, as a hint


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted((root / "model").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path) -> list[tuple[str, int]]:
    """Every module name an import statement of this file names, anywhere in it."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            names += [(base, node.lineno)]
            names += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return names


def _unit(module: str) -> str:
    """The part of model/ a module belongs to: model.jobs.detect -> model.jobs."""
    return ".".join(module.split(".")[:2])


def unit_edges(root: Path) -> Edges:
    modules = _modules(root)
    edges: Edges = {}
    for module, path in modules.items():
        for name, line in _imported(module, path):
            while name and name not in modules:  # `from pkg import name`: name is no module
                name = name.rpartition(".")[0]
            if not name.startswith("model.") or _unit(name) == _unit(module):
                continue
            hint = f"{path.relative_to(root)}:{line} imports {name}"
            edges.setdefault(_unit(module), {}).setdefault(_unit(name), hint)
    return edges


def cycles(edges: Edges) -> list[list[str]]:
    """One shortest cycle through each unit that is on any, each listed once."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for start in sorted(edges):
        # Breadth first from start's successors back to start: the shortest cycle through it.
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for unit in frontier:
                for target in sorted(edges.get(unit, {})):
                    if target == start:
                        cycle = paths[unit]
                        break
                    if target not in paths:
                        paths[target] = [*paths[unit], target]
                        nxt.append(target)
                if cycle:
                    break
            frontier = nxt
        if cycle and frozenset(cycle) not in seen:
            seen.add(frozenset(cycle))
            found.append(cycle)
    return found


def describe(cycle: list[str], edges: Edges) -> str:
    steps = zip(cycle, [*cycle[1:], cycle[0]], strict=True)
    return "\n".join(f"  {a} -> {b}  ({edges[a][b]})" for a, b in steps)


def test_model_has_no_import_cycle_between_its_packages() -> None:
    edges = unit_edges(PROJECT_ROOT)
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n\n".join(describe(c, edges) for c in found)


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path: Path) -> None:
    files = {
        "model/__init__.py": "",
        "model/settings.py": "def limits():\n    from model.jobs.registry import JOBS\n",
        "model/jobs/__init__.py": "",
        "model/jobs/registry.py": "from . import detect\n",
        "model/jobs/detect.py": "from model.sources.fetch import get\n",
        "model/sources/__init__.py": "",
        "model/sources/fetch.py": "from model.settings import Settings\n",
        "model/api/__init__.py": "",
        "model/api/app.py": "from model import settings\nfrom model.jobs import registry\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    edges = unit_edges(tmp_path)
    assert cycles(edges) == [["model.jobs", "model.sources", "model.settings"]]
    listed = describe(cycles(edges)[0], edges)
    assert "model/settings.py:2 imports model.jobs.registry" in listed
    assert "model/jobs/detect.py:1 imports model.sources.fetch" in listed
