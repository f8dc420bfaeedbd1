"""The shape of the code: layers and framework boundaries (import-linter contracts in
pyproject.toml), no import circle, no module over 400 lines. Fails, never skips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 400


def test_import_linter_contracts_hold() -> None:
    code = (
        "import sys; from importlinter.cli import lint_imports;"
        " sys.exit(lint_imports(no_cache=True))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle_counting_imports_inside_functions() -> None:
    # grimp reads every import statement, also those inside functions (lazy imports).
    graph = grimp.build_graph("fleet", cache_dir=None)
    modules = {m for m in graph.modules if m.startswith("fleet")}
    edges = {
        m: {
            i
            for i in graph.find_modules_directly_imported_by(m)
            if i in modules and i != "fleet" and not m.startswith(i + ".")
        }
        for m in modules
        if m != "fleet"  # the package root re-exports the public API lazily
    }
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in (REPO / "fleet").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_core_modules_load_no_framework_in_a_fresh_interpreter() -> None:
    # What import-linter checks statically, checked at run time for the hottest paths.
    core = ["fleet", "fleet.inventory.loader", "fleet.report", "fleet.lifecycle", "fleet.cli"]
    code = (
        "import importlib, json, sys\n"
        f"for m in {core!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = json.loads(out)
    offenders = sorted({m.split(".")[0] for m in loaded} & {"celery", "kombu", "paramiko", "redis"})
    assert offenders == []
