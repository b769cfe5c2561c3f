"""The layout of the ``stagewarden.cli`` package: commands share only the shared modules, nothing
imports the package back, no module takes another's private names, and no file grows past 600 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import stagewarden
from stagewarden._version import __version__

PACKAGE = "stagewarden.cli"
CLI_DIR = Path(stagewarden.__file__).parent / "cli"
#: The modules every command may import from; they never import a command module.
SHARED = frozenset({"common", "spec_input", "proving", "spec_settings", "train_summary"})
#: The modules that assemble the commands (and may therefore import them).
ENTRY = frozenset({"__init__", "__main__"})
MAX_LINES = 600


def _imports(source: str) -> list[tuple[str, tuple[str, ...], int]]:
    """Every import in ``source`` (at any depth, so also the lazy ones inside functions), as
    ``(module, names, line)``; ``names`` is empty for ``import module``."""
    found: list[tuple[str, tuple[str, ...], int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import, resolved against the package
                base = PACKAGE.rsplit(".", node.level - 1)[0] if node.level > 1 else PACKAGE
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((module, tuple(alias.name for alias in node.names), node.lineno))
    return found


def layout_violations(name: str, source: str) -> list[str]:
    """What the module ``stagewarden.cli.<name>`` with this ``source`` does against the layout rules."""
    problems = []
    for module, names, line in _imports(source):
        where = f"{name}.py:{line}"
        if module == PACKAGE:
            if name not in ENTRY:
                problems.append(f"{where}: imports the package {PACKAGE} itself")
            continue
        if not module.startswith(PACKAGE + "."):
            continue
        target = module.removeprefix(PACKAGE + ".").split(".")[0]
        private = [n for n in names if n.startswith("_")]
        if private:
            problems.append(f"{where}: imports the private name(s) {', '.join(private)} of {module}")
        if target not in SHARED and name not in ENTRY:
            problems.append(f"{where}: imports the command module {module}")
    return problems


def _modules() -> dict[str, str]:
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(CLI_DIR.glob("*.py"))}


def test_the_package_has_its_shared_modules_and_commands() -> None:
    """The scan below reads the real package: the shared modules and several commands are there."""
    modules = _modules()
    assert SHARED <= modules.keys()
    assert {"verify", "train", "attest", "audit"} <= modules.keys()


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_follows_the_layout(name: str) -> None:
    """No module imports the package back, a command module, or another module's private name."""
    assert layout_violations(name, _modules()[name]) == []


def test_there_is_no_import_cycle_inside_the_package() -> None:
    """The imports between the package's modules (lazy ones included) form no cycle."""
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, source in modules.items():
        for module, names, _ in _imports(source):
            if module == PACKAGE:
                edges[name] |= {"__init__"} | {n for n in names if n in modules}
            elif module.startswith(PACKAGE + "."):
                edges[name].add(module.removeprefix(PACKAGE + ".").split(".")[0])
    edges["__init__"].discard("__init__")
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, (*path, node))
        done.add(node)

    for name in sorted(edges):
        visit(name, ())


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from stagewarden.cli import _load\n", "imports the package stagewarden.cli itself"),
        ("def f():\n    import stagewarden.cli\n", "imports the package stagewarden.cli itself"),
        ("from stagewarden.cli.train import ATTACK_NAMES\n", "imports the command module stagewarden.cli.train"),
        ("from stagewarden.cli.common import _is_terminal\n", "imports the private name(s) _is_terminal"),
        ("from .attest import attest\n", "imports the command module stagewarden.cli.attest"),
    ],
)
def test_the_scan_catches_each_kind_of_violation(source: str, expected: str) -> None:
    """A command module that breaks a rule (even in a lazy import) is reported."""
    assert any(expected in problem for problem in layout_violations("report", source))


def test_shared_modules_import_no_command_module() -> None:
    """A shared module may not import a command module either."""
    assert layout_violations("common", "from stagewarden.cli.demo import demo\n")
    assert layout_violations("common", "from stagewarden.cli.spec_input import load_spec_or_example\n") == []


@pytest.mark.parametrize(
    "path",
    sorted([*CLI_DIR.glob("*.py"), *(CLI_DIR.parent / "conformance").glob("*.py")]),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_no_module_is_over_600_lines(path: Path) -> None:
    """Every module of the CLI and of the conformance check stays at most 600 lines."""
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines"


def test_python_dash_m_runs_the_command_line() -> None:
    """``python -m stagewarden.cli`` is the ``stagewarden`` command (for where the script is not on PATH)."""
    done = subprocess.run(
        [sys.executable, "-m", PACKAGE, "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"stagewarden, version {__version__}"
