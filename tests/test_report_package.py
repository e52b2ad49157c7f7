"""The report package's shape: small modules, no import cycle among them, its assets beside them."""

from __future__ import annotations

import ast
from importlib.resources import files
from pathlib import Path

from sweeper import report

PACKAGE = Path(report.__file__).parent


def test_report_modules_are_small_and_import_no_cycle():
    graph = {}
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 400, path.name
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sweeper.report."):
                found.add(node.module.split(".")[2])
        graph[path.stem] = found - {path.stem}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path[path.index(module):], module))}"
        if module not in done:
            for imported in sorted(graph[module]):
                visit(imported, (*path, module))
            done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_the_page_template_stylesheet_and_script_are_package_data():
    assets = files("sweeper.report") / "assets"
    assert {"page.html.j2", "report.css", "report.js"} <= {item.name for item in assets.iterdir()}
