"""The shape of the code, held by walking every import (lazy ones too; ``TYPE_CHECKING`` blocks excepted) with ``ast``.

* imports point down ``LAYERS``: a module imports its own unit or units of lower layers, never up or sideways;
* no import cycle among tuner's modules;
* no ``from x import _private`` across modules (a private module only from inside its own package);
* heavy dependencies live in their homes: optuna and sqlalchemy under ``study/`` (optuna's plots in ``reports/``),
  mlflow in ``tracking/``, typer in ``cli/``;
* private Optuna and torch names (``x._name``) only in ``study/storage/_optuna.py`` and ``_torch.py``;
* ``tuner --help`` and ``import tuner`` import neither torch nor optuna nor mlflow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tuner"

LAYERS: list[tuple[str, ...]] = [
    ("tuner.version", "tuner.errors", "tuner.lazy"),
    ("tuner.recipe", "tuner.space"),
    ("tuner.schedules", "tuner.spec"),
    ("tuner._torch",),
    ("tuner.optim",),
    ("tuner.tasks",),
    ("tuner.train",),
    ("tuner.tracking",),
    ("tuner.study.keys", "tuner.study.search"),
    ("tuner.study.storage",),
    ("tuner.study",),
    ("tuner.ci", "tuner.reports"),
    ("tuner.integrations",),
    ("tuner.cli",),
    ("tuner.__main__", "tuner"),
]
"""Units of the code, lowest first. A unit is a module or a package (all of its modules)."""

HOMES = {
    "optuna": ("tuner.study", "tuner.reports"),
    "sqlalchemy": ("tuner.study",),
    "mlflow": ("tuner.tracking",),
    "typer": ("tuner.cli",),
}
PRIVATE_NAME_HOMES = ("study/storage/_optuna.py", "_torch.py")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _unit(module: str) -> tuple[int, str]:
    """(layer, unit) of a tuner module: the longest unit of ``LAYERS`` that is it or contains it."""
    best: tuple[int, str] = (-1, "")
    for layer, units in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and len(unit) > len(best[1]):
                best = (layer, unit)
    assert best[1], f"{module} is in no unit of LAYERS"
    return best


def _under_type_checking(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for inner in node.body:
                skipped |= {id(n) for n in ast.walk(inner)}
    return skipped


@cache
def imports_of(module: str) -> tuple[tuple[str, tuple[str, ...], int], ...]:
    """(imported module, names taken from it, line) for every import of ``module`` at run time, lazy ones included."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skipped = _under_type_checking(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.append((base, tuple(alias.name for alias in node.names), node.lineno))
    return tuple(found)


def _tuner_targets(imported: str, names: tuple[str, ...]) -> list[str]:
    """The tuner modules an import loads: the module, and ``from package import submodule`` names."""
    if imported != "tuner" and not imported.startswith("tuner."):
        return []
    targets = [imported] if imported in MODULES else []
    targets += [f"{imported}.{name}" for name in names if f"{imported}.{name}" in MODULES]
    return targets or [imported]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module: str) -> None:
    layer, unit = _unit(module)
    for imported, names, line in imports_of(module):
        for target in _tuner_targets(imported, names):
            target_layer, target_unit = _unit(target)
            assert target_unit == unit or target_layer < layer, (
                f"{module}:{line} imports {target} ({target_unit}, layer {target_layer}) from {unit} (layer {layer}): "
                f"imports must point down LAYERS"
            )


def test_no_import_cycle_among_tuner_modules() -> None:
    graph = {
        module: {
            t
            for imported, names, _ in imports_of(module)
            for t in _tuner_targets(imported, names)
            if t in MODULES and t != module
        }
        for module in MODULES
    }
    # a package's __init__ is loaded before its submodules: an edge from a submodule to its own package is no cycle
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(node: str, trail: list[str]) -> None:
        visiting.add(node)
        for nxt in sorted(graph[node]):
            if nxt in visiting:
                cycles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, trail + [nxt])
        visiting.discard(node)
        done.add(node)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_is_imported_across_modules(module: str) -> None:
    for imported, names, line in imports_of(module):
        if not (imported == "tuner" or imported.startswith("tuner.")):
            continue
        private = [p for p in imported.split(".") if p.startswith("_") and not p.startswith("__")]
        private += [n for n in names if n.startswith("_") and not n.startswith("__")]
        for name in private:
            owner = imported if name in names else imported[: imported.index(name)].rstrip(".")
            assert module == owner or module.startswith(owner + "."), (
                f"{module}:{line} imports private {name!r} from {imported}: only {owner}'s own modules may"
            )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_heavy_dependencies_live_in_their_homes(module: str) -> None:
    for imported, _, line in imports_of(module):
        top = imported.split(".")[0]
        homes = HOMES.get(top)
        if homes is not None:
            assert any(module == h or module.startswith(h + ".") for h in homes), (
                f"{module}:{line} imports {top}; its homes are {homes}"
            )


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_private_attributes_of_other_libraries_stay_in_one_file(path: Path) -> None:
    """``x._name`` on anything but ``self``/``cls`` (Optuna's and torch's internals) only in the files made for it."""
    relative = str(path.relative_to(PACKAGE))
    if relative in PRIVATE_NAME_HOMES:
        return
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            assert isinstance(owner, ast.Name) and owner.id in ("self", "cls"), (
                f"{relative}:{node.lineno}: {ast.unparse(node)} reaches into a private name; "
                f"it belongs in {' or '.join(PRIVATE_NAME_HOMES)}"
            )


def test_every_package_declares_its_public_names() -> None:
    for path in sorted(PACKAGE.rglob("__init__.py")):
        tree = ast.parse(path.read_text())
        declared = any(
            isinstance(node, ast.Assign)
            and any(getattr(t, "id", None) == "__all__" for t in node.targets)
            or isinstance(node, ast.AnnAssign)
            and getattr(node.target, "id", None) == "__all__"
            for node in tree.body
        )
        assert declared, f"{path.relative_to(PACKAGE.parent)} declares no __all__"


def test_help_and_import_tuner_load_neither_torch_nor_optuna_nor_mlflow() -> None:
    code = (
        "import sys\nfrom typer.testing import CliRunner\nimport tuner\nfrom tuner.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('torch', 'optuna', 'mlflow', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_public_api_resolves_every_name() -> None:
    import tuner

    missing = [name for name in tuner.__all__ if getattr(tuner, name, None) is None]
    assert not missing, f"tuner.__all__ names that do not resolve: {missing}"


def test_ruff_finds_nothing() -> None:
    """ruff (pyproject.toml: line length 120, import order, pyflakes, bugbear) passes on the whole tree."""
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed (it comes with the test extras: scripts/setup.sh test)")
    result = subprocess.run([str(ruff), "check", "--no-cache", str(PACKAGE.parent)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
