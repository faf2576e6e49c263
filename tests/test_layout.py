"""What may import what: the core names no adapter, and the product imports no simulator.

``broker/`` finds the built-in adapters through their entry points (pyproject.toml), as it
finds any plugin; the simulators (``adapters/<name>/sim/``) and the demo bundle built on
them (``adapters/demo/``) are test peers, which the product never imports.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in ``path``, relative ones made absolute."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            yield node.lineno, module
            yield from ((node.lineno, f"{module}.{alias.name}") for alias in node.names)


IMPORTERS = {"import_module", "__import__", "find_spec", "iter_modules", "spec_from_file_location"}


def _names_adapters_module(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.fullmatch(r"adapters(\.\w+)+", node.value) is not None
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in IMPORTERS and any(
            isinstance(a, ast.Constant) and str(a.value).startswith("adapters") for a in node.args
        )
    return False


def test_broker_imports_nothing_from_adapters() -> None:
    found = []
    for path in sorted((ROOT / "broker").rglob("*.py")):
        found += [
            f"{path.name}:{n}: {m}" for n, m in imports(path) if m.split(".")[0] == "adapters"
        ]
        # no importlib tricks either: no string naming an adapters module, nor one given to
        # an import function
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if _names_adapters_module(node):
                found.append(f"{path.name}:{getattr(node, 'lineno', 0)}: {ast.unparse(node)}")
    assert not found


def test_product_imports_no_simulator_and_nothing_of_the_demo() -> None:
    product = [
        p
        for p in sorted((ROOT / "adapters").rglob("*.py"))
        if "sim" not in p.relative_to(ROOT).parts and "demo" not in p.relative_to(ROOT).parts
    ]
    assert len(product) > 20
    found = [
        f"{path.relative_to(ROOT)}:{n}: {m}"
        for path in product
        for n, m in imports(path)
        if m.startswith("adapters.") and (".sim." in f"{m}." or m.startswith("adapters.demo"))
    ]
    assert not found


def test_no_simulator_module_is_left_beside_the_product() -> None:
    stray = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "adapters").glob("*/*.py")
        if p.name == "simulator.py" or p.name.startswith("_sim")
    )
    assert not stray


@pytest.mark.parametrize("tree", ["plugins_example", "adapters"])
def test_plugins_built_in_or_not_import_only_the_public_face(tree: str) -> None:
    import broker

    public = set(broker.__all__)
    assert all(hasattr(broker, name) for name in public)
    allowed = {"hookspecs", "cli"}  # the documented contract, and the command line
    found = []
    for path in sorted((ROOT / tree).rglob("*.py")):
        for n, module in imports(path):
            top, _, rest = module.partition(".")
            if top != "broker" or not rest:
                continue
            if rest.split(".")[0] not in allowed and rest not in public:
                found.append(f"{path.relative_to(ROOT)}:{n}: {module}")  # broker.X: not public
    assert not found, "import these from `broker` (its __all__) instead"
