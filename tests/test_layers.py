"""The package layout of DESIGN.md, read from the sources' imports: `app -> model_store <-
training`, inside app `api -> serving -> engine -> core` (no import runs upward), and no
import circle among the modules, not even through imports for type checking only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "model_store", "training")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The modules `path` imports (absolute names, relative ones resolved), those under
    `if TYPE_CHECKING:` too."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(tree.body)
    return found


def graph() -> dict[str, set[str]]:
    paths = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p): p for p in paths}
    return {name: imports_of(p) & modules.keys() - {name} for name, p in modules.items()}


def test_the_graph_is_read():
    g = graph()
    assert "app.serving.service" in g and "app.engine.engine" in g["app.engine.registry"]
    assert "model_store" in g["training.loop"] or any(
        m.startswith("model_store") for m in g["training.loop"]
    )


def test_packages_import_only_downward():
    for name, imports in graph().items():
        top = name.split(".")[0]
        for imported in imports:
            other = imported.split(".")[0]
            if top == "model_store":
                assert other == "model_store", f"{name} imports {imported}"
            if top == "app":
                assert other != "training", f"{name} imports {imported}"
            if top == "training":
                assert other != "app", f"{name} imports {imported}"


APP_LAYERS = ("api", "serving", "engine", "core")  # each may import those after it


@pytest.mark.parametrize("layer", APP_LAYERS)
def test_app_layers_import_only_downward(layer):
    above = APP_LAYERS[: APP_LAYERS.index(layer)]
    for name, imports in graph().items():
        if not name.startswith(f"app.{layer}"):
            continue
        for imported in imports:
            parts = imported.split(".")
            assert not (parts[0] == "app" and len(parts) > 1 and parts[1] in above), (
                f"{name} imports {imported}, from a layer above {layer}"
            )


@pytest.mark.parametrize("leaf", ["schemas", "pages"])
def test_schemas_and_pages_import_no_layer(leaf):
    """The request and response models and the pages stand below api and serving, beside
    core: they import nothing from api, serving or engine."""
    for name, imports in graph().items():
        if name.startswith(f"app.{leaf}"):
            for imported in imports:
                parts = imported.split(".")
                assert not (parts[0] == "app" and parts[1:2] and parts[1] in APP_LAYERS[:3]), (
                    f"{name} imports {imported}"
                )


def test_no_import_circle():
    g = graph()
    done: set[str] = set()

    def walk(name: str, path: list[str]) -> None:
        if name in path:
            circle = [*path[path.index(name) :], name]
            raise AssertionError("import circle: " + " -> ".join(circle))
        if name in done:
            return
        for imported in sorted(g[name]):
            walk(imported, [*path, name])
        done.add(name)

    for name in sorted(g):
        walk(name, [])
