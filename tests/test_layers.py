"""The layer arrows of ARCHITECTURE.md hold: no project import goes upward or sideways, and no module imports itself back."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("kpr_model", "training", "storage", "workers", "pipelines")

# Which project modules each layer may import (a name covers its submodules).
ALLOWED = {
    "kpr_model": ("kpr_model",),
    "training": ("training", "kpr_model"),
    "storage": ("storage", "kpr_model.distance"),
    "workers": ("workers", "kpr_model"),
    "pipelines": LAYERS,
}


def _project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a project module in ``path``, lazy imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in LAYERS]
    return found


def _allowed(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in allowed)


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_follow_the_arrows(layer):
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"layer {layer} has no modules"
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in files
        for line, module in _project_imports(path)
        if not _allowed(module, ALLOWED[layer])
    ]
    assert not violations, f"{layer} may import only {ALLOWED[layer]}:\n" + "\n".join(violations)


def _module_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (lazy imports included; ``from pkg import sub`` names sub)."""
    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in paths:
                subs = {f"{node.module}.{alias.name}" for alias in node.names} & paths.keys()
                imported |= subs or {node.module}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names} & paths.keys()
        graph[name] = imported - {name}
    return graph


def test_no_import_circle():
    graph, state, path = _module_graph(), {}, []

    def visit(module: str) -> list[str] | None:
        """A circle through ``module``'s imports, or None (state: 1 = on the current path, 2 = done)."""
        state[module] = 1
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                return path[path.index(imported):] + [imported]
            if imported not in state and (circle := visit(imported)):
                return circle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        circle = None if module in state else visit(module)
        assert circle is None, "import circle: " + " -> ".join(circle)
