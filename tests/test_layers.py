"""The layer arrows of ARCHITECTURE.md hold: no project import goes upward or sideways."""
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
