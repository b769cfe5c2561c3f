"""End to end: the built wheel installs into a fresh virtual environment and works there, away
from the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "constraints.txt"
# Build outputs and caches that must not leak into the copy the wheel is built from.
_NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".hypothesis",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "_build",
    "runs",
)


def _run(args: list[str | Path], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command with an environment free of this checkout (no PYTHONPATH, no virtualenv)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    """The wheel has every package and example, installs in a fresh venv and runs outside the repo."""
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=_NOT_COPIED)
    dist = tmp_path / "dist"
    # Build with this environment's setuptools (which brings its own bdist_wheel), so no index is
    # needed; the "wheel" build requirement is therefore not checked.
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check"]
    _run([*build, "--outdir", dist, source], cwd=source)
    (wheel,) = dist.glob("stagewarden-*.whl")

    examples = sorted(p.stem for p in (REPO / "spec" / "examples").glob("*.yaml"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for package in (
        "stagewarden",
        "stagewarden/spec",
        "stagewarden/prover",
        "stagewarden/attest",
        "stagewarden/runtime",
    ):
        assert f"{package}/__init__.py" in names
    assert "stagewarden/py.typed" in names
    packaged = [
        n.removeprefix("stagewarden/spec/examples/") for n in names if n.startswith("stagewarden/spec/examples/")
    ]
    assert sorted(packaged) == sorted(f"{name}.yaml" for name in examples)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--quiet", "-c", CONSTRAINTS, wheel], cwd=tmp_path, timeout=900)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _run(
        [
            python,
            "-c",
            "import stagewarden, stagewarden.spec, stagewarden.prover, stagewarden.attest, stagewarden.runtime",
        ],
        cwd=outside,
    )
    located = _run(
        [
            python,
            "-c",
            "import stagewarden, stagewarden.spec as s; "
            "print(stagewarden.__file__); print('\\n'.join(s.example_names()))",
        ],
        cwd=outside,
    ).stdout.splitlines()
    assert Path(located[0]).is_relative_to(venv), "stagewarden was imported from outside the fresh venv"
    assert located[1:] == examples

    help_text = _run([venv / "bin" / "stagewarden", "--help"], cwd=outside).stdout
    assert help_text.startswith("Usage: stagewarden ")
    listed = _run([venv / "bin" / "stagewarden", "examples", "list"], cwd=outside).stdout
    assert all(name in listed for name in examples)
