"""The shape of the code: imports point down, heavy dependencies stay in their homes, `--help` is light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tuner"

# module (path prefix) -> heavy packages it may import at module level
HOMES = {"optuna": ("study/", "reports/"), "mlflow": ("tracking.py",), "typer": ("cli/",)}


def _module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_heavy_dependencies_live_in_their_homes(path: Path) -> None:
    relative = str(path.relative_to(PACKAGE))
    imported = _module_level_imports(path)
    for package, homes in HOMES.items():
        if package in imported:
            assert relative.startswith(homes), f"{relative} imports {package} at module level; its home is {homes}"


def test_help_imports_neither_torch_nor_optuna_nor_mlflow() -> None:
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom tuner.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "print(sorted(m for m in ('torch', 'optuna', 'mlflow', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
