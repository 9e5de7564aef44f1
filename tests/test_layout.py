"""The house's rules, checked on every run: the layers' import contract
(``[tool.importlinter]`` in pyproject.toml, docs/architecture.md), one import name per
module, test modules that import support code (tests/support/), never each other, and
benchmarks that share code through bench/common.py, with no import cycle anywhere."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _sources(*dirs: str) -> list[Path]:
    return [p for d in dirs for p in sorted((ROOT / d).rglob("*.py"))]


def test_the_layers_import_only_downwards() -> None:
    """import-linter's contracts, as ``./dev lint`` runs them."""
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_drivers_and_simulator_are_imported_by_their_package_name_only() -> None:
    """drivers/ and simulator/ are installed as lockerd.drivers and lockerd.simulator
    (ADR 0017): a bare ``import drivers`` would load a second copy in a checkout and
    fail in an installed wheel."""
    bare = [
        f"{p.relative_to(ROOT)}: {name}"
        for p in _sources("lockerd", "drivers", "simulator", "tests", "bench", "tools")
        for name in _imports(p)
        if name.split(".")[0] in ("drivers", "simulator")
    ]
    assert bare == []


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in ("drivers", "simulator"):  # installed as lockerd.drivers, ... (ADR 0017)
        parts.insert(0, "lockerd")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _named(path: Path) -> set[str]:
    """Every dotted name an import in ``path`` names: ``from a.b import c`` names ``a.b``
    and ``a.b.c`` (``c`` may be a module); relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = _module_of(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def _graph(*dirs: str) -> dict[str, set[str]]:
    """Module -> the modules of ``dirs`` it imports (not its own package's __init__)."""
    paths = {_module_of(p): p for p in _sources(*dirs)}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        deps: set[str] = set()
        for name in _named(path):
            parts = name.split(".")
            found = next(
                (
                    ".".join(parts[:n])
                    for n in range(len(parts), 0, -1)
                    if ".".join(parts[:n]) in paths
                ),
                None,
            )
            if found is not None and found != module and not module.startswith(found + "."):
                deps.add(found)
        graph[module] = deps
    return graph


def test_no_module_imports_a_test_module_or_a_conftest() -> None:
    """Support code lives in tests/support/ (and bench/common.py): a test module is
    collected by pytest and imported by nobody, so that its fixtures and its tests are
    not loaded twice and a test cannot break another module's collection."""
    offenders = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in _sources("tests", "bench")
        for name in _named(path)
        if name.split(".")[0] in ("tests", "bench")
        and any(part.startswith("test_") or part == "conftest" for part in name.split("."))
    )
    assert offenders == []


def test_benchmarks_share_code_through_bench_common_and_import_no_cycle() -> None:
    """bench/__main__.py runs the benchmarks; a benchmark imports other benchmark code
    only from bench/common.py (and tests/support); no import cycle among the modules of
    lockerd (its layers included), tools, tests and bench."""
    graph = _graph("lockerd", "drivers", "simulator", "tools", "tests", "bench")
    assert {"lockerd.hub.service", "lockerd.drivers.bus", "bench.common"} <= set(graph)

    def allowed(module: str, dep: str) -> bool:
        if not (module.startswith("bench.") and dep.startswith("bench.")):
            return True
        if module == "bench.__main__":
            return True  # it runs them all
        return module != "bench.common" and dep == "bench.common"

    strays = sorted(
        f"{module} imports {dep}"
        for module, deps in graph.items()
        for dep in deps
        if not allowed(module, dep)
    )
    assert strays == []
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_production_commands_never_load_the_demo_or_the_simulator() -> None:
    """``lockerd run`` (systemd's command) and ``lockerctl`` import neither the demo
    nor the simulator: they are loaded only by ``lockerd demo`` or a simulated config."""
    probe = (
        "import sys, lockerd.cli.main, lockerd.cli.ctl, lockerd.daemon.serve; "
        "print([m for m in sys.modules if m.startswith(('lockerd.simulator', 'lockerd.demo'))])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_every_board_kind_a_config_may_name_has_a_simulation() -> None:
    """A new board kind: its settings (drivers/settings.py), its driver
    (drivers/boards.py, make_board refuses to type-check without it) and its simulation
    (simulator/boards.py), or the demo and the tests cannot run it."""
    from lockerd.drivers.settings import BOARD_KINDS  # noqa: PLC0415
    from lockerd.simulator.boards import BOARD_TYPES  # noqa: PLC0415

    assert set(BOARD_TYPES) == set(BOARD_KINDS)
