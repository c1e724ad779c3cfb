"""Imports only go down the layers: functional <- transforms <- recipes <- optim/routing/registry/
estimate <- bench <- cli. Private top-level modules (``_types``, ``_checks``) are layer 0."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import orthoptim

PACKAGE_ROOT = Path(orthoptim.__file__).parent

LAYERS: dict[str, int] = {
    "_types": 0,
    "_checks": 0,
    "functional": 1,
    "transforms": 2,
    "recipes": 3,
    "optim": 4,
    "distributed": 4,
    "fused": 4,
    "nonfinite": 4,
    "amp": 4,
    "groups": 4,
    "checkpoint": 4,
    "previous_point": 4,
    "hvp": 4,
    "oracle": 4,
    "eager": 4,
    "telemetry": 4,
    "routing": 4,
    "model_trace": 4,
    "registry": 4,
    "specs": 4,
    "estimate": 4,
    "bench": 5,
    "integrations": 5,
    "cli": 6,
    "__main__": 6,
    "__init__": 7,
}


def layer_of(module: str) -> int:
    """The layer of a dotted module inside orthoptim (``orthoptim.transforms.chain`` -> 2)."""
    top = module.split(".")[1] if "." in module else "__init__"
    return LAYERS[top]


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = path.relative_to(PACKAGE_ROOT).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out.append(("orthoptim." + ".".join(parts), path))
    return out


def imported_modules(path: Path) -> list[str]:
    """The orthoptim modules ``path`` imports (``from orthoptim import x`` counts as
    ``orthoptim.x``); relative imports are refused, the project writes absolute ones."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import of {node.module!r}"
            if node.module == "orthoptim":
                found += [f"orthoptim.{a.name}" for a in node.names]
            elif node.module:
                found.append(node.module)
    return [m for m in found if m == "orthoptim" or m.startswith("orthoptim.")]


def test_every_module_has_a_layer() -> None:
    for module, _ in modules():
        if module == "orthoptim.orthoptim":
            continue
        layer_of(module)


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_imports_only_go_down(module: str, path: Path) -> None:
    if module == "orthoptim.__init__" or path == PACKAGE_ROOT / "__init__.py":
        return  # the public API re-exports every layer
    mine = layer_of(module)
    for target in imported_modules(path):
        if target == "orthoptim":
            raise AssertionError(f"{module} imports the top-level package (use the layer module)")
        theirs = layer_of(target)
        assert theirs <= mine, f"{module} (layer {mine}) imports {target} (layer {theirs})"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from orthoptim.registry import build\n")
    targets = imported_modules(bad)
    assert targets == ["orthoptim.registry"]
    assert layer_of(targets[0]) > layer_of("orthoptim.functional.bad")


def import_graph() -> dict[str, set[str]]:
    """``{module: the orthoptim modules it imports}``, where ``from orthoptim.a import b`` counts
    as importing ``orthoptim.a.b`` when ``b`` is a module, else ``orthoptim.a``."""
    known = {m for m, _ in modules()}
    graph: dict[str, set[str]] = {}
    for module, path in modules():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                    for a in node.names
                ]
            else:
                continue
            targets |= {n for n in names if n in known and n != module}
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order, the first repeated at the end), or
    ``None``; a package's ``__init__`` re-exporting its modules is not a cycle with them."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            if module.startswith(target + "."):
                continue  # a module importing from its own package's __init__
            found = visit(target)
            if found:
                return found
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        found = visit(module)
        if found:
            return found
    return None


def test_no_import_cycle_inside_the_package() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_sees_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
