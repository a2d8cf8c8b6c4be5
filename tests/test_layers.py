"""The layers of README's "The pieces", enforced: no privkit module imports a layer above its own.

Each module is placed in one layer below (the first matching prefix wins); an import is an
``import privkit.x`` / ``from privkit import x`` / ``from privkit.x import y`` anywhere in the
module outside an ``if TYPE_CHECKING:`` block (type hints are not dependencies at run time).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "privkit"

# Lowest first. A module may import its own layer and the layers below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",  # data, models, metrics and figures: no privacy machinery, no ledger
        (
            "privkit._arrays",
            "privkit._io",
            "privkit._validate",
            "privkit._search",
            "privkit.data",
            "privkit.models",
            "privkit.scattering",
            "privkit.metrics",
            "privkit.fairness",
            "privkit.calibration",
            "privkit.attacks.scores",
            "privkit.attacks.image_similarity",
            "privkit.plots",
            "privkit.executors",
        ),
    ),
    (
        "privacy",  # one mechanism type, the accountants, randomness, the ledger, risk bounds
        (
            "privkit._prv",
            "privkit.accounting",
            "privkit.mechanism",
            "privkit.randomness",
            "privkit._hashchain",
            "privkit._ledger_sqlite",
            "privkit._ledger_postgres",
            "privkit.budget",
            "privkit.risk",
        ),
    ),
    ("engine", ("privkit.engine",)),  # the only place noise is drawn and added
    ("results", ("privkit.results",)),  # one results store: tables, run ids, provenance
    (
        "workflows",
        (
            "privkit.train",
            "privkit.individual",
            "privkit.recipes",
            "privkit.tuning",
            "privkit.federated",
            "privkit.attacks",
            "privkit.audit",
            "privkit.trust",
            "privkit.private_calibration",
            "privkit.stacks",
            "privkit.bench",
            "privkit.bench_accounting",
        ),
    ),
    (
        "entry points",
        (
            "privkit.experiments",
            "privkit.cli",
            "privkit.__main__",
            "privkit.course",
            "privkit.widgets",
            "privkit",
        ),
    ),
]
NO_LEDGER = ("privkit.budget", "privkit._ledger_sqlite", "privkit._ledger_postgres")


def layer_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return i
    raise AssertionError(f"{module} is in no layer of LAYERS: place it in README and here")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not name.endswith("conftest"):
            found[name] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "privkit")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "privkit":
                found.update(f"privkit.{a.name}" for a in node.names)
            elif node.module.startswith("privkit."):
                found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own(module):
    own = layer_of(module)
    above = sorted(
        f"{name} ({LAYERS[layer_of(name)][0]})"
        for name in imports(MODULES[module])
        if name in MODULES and layer_of(name) > own
    )
    assert not above, f"{module} ({LAYERS[own][0]}) imports a layer above it: {above}"


@pytest.mark.parametrize("module", [m for m in sorted(MODULES) if layer_of(m) == 0])
def test_base_modules_import_no_ledger(module):
    assert not imports(MODULES[module]) & set(NO_LEDGER)


def test_an_upward_import_is_caught(tmp_path):
    """The checker itself: a base module importing the ledger, even as ``from privkit import``."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\n"
        "from privkit import budget\n"
        "if TYPE_CHECKING:\n    from privkit import train\n"
        "def f():\n    import privkit.experiments\n"
    )
    assert imports(bad) == {"privkit.budget", "privkit.experiments"}
    assert layer_of("privkit.budget") > layer_of("privkit.calibration")
    assert layer_of("privkit.experiments") > layer_of("privkit.trust")


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)
