"""Imports point one way: nothing under ``matcher/`` imports ``indexer`` (the catalog job runner that
used to sit on top of the library; the index job now lives in ``matcher.indexing``).

Checked on the source (every ``import``, ``from ... import`` and ``importlib.import_module("...")``
under ``matcher/``, including the ones inside functions), so a lazy import cannot hide the arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

MATCHER_DIR = Path(__file__).resolve().parents[1] / "matcher"
FORBIDDEN = ("indexer",)


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            found.append((node.lineno, node.args[0].value))
    return found


def test_nothing_under_matcher_imports_indexer():
    sources = sorted(MATCHER_DIR.rglob("*.py"))
    assert len(sources) > 10  # the walk found the package
    wrong = [f"{path.relative_to(MATCHER_DIR.parent)}:{line}: {module}"
             for path in sources
             for line, module in _imported_modules(ast.parse(path.read_text(), filename=str(path)))
             if module.split(".")[0] in FORBIDDEN]
    assert not wrong, "matcher/ must not import indexer:\n" + "\n".join(wrong)
