"""End to end: the built wheel installs into a fresh virtual environment and works there, away
from the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
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


_REQUIREMENTS_MET = """
from importlib.metadata import requires, version
from packaging.requirements import Requirement
declared = [Requirement(r) for r in requires("stagewarden") if "extra ==" not in r]
assert len(declared) >= 10, declared
for r in declared:
    assert r.specifier.contains(version(r.name), prereleases=True), (str(r), version(r.name))
"""


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

    examples = sorted(p.stem for p in (REPO / "stagewarden" / "spec" / "examples").glob("*.yaml"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for package in (
        "stagewarden",
        "stagewarden/spec",
        "stagewarden/prover",
        "stagewarden/attest",
        "stagewarden/runtime",
        "stagewarden/runtime/protocol",
        "stagewarden/runtime/worker",
        "stagewarden/runtime/attacks",
        "stagewarden/cli",
        "stagewarden/conformance",
    ):
        assert f"{package}/__init__.py" in names
    assert "stagewarden/py.typed" in names
    # the report's page template and style sheet (the report cannot be built without them)
    assert {"stagewarden/report/templates/page.html", "stagewarden/report/templates/stagewarden.css"} <= names
    packaged = [
        n.removeprefix("stagewarden/spec/examples/") for n in names if n.startswith("stagewarden/spec/examples/")
    ]
    assert sorted(packaged) == sorted(f"{name}.yaml" for name in examples)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    # The dependencies (torch alone is gigabytes) come from this environment through a path
    # entry placed after the venv's own site-packages; its .pth files (this checkout's editable
    # install among them) are not processed there, so stagewarden can come only from the wheel.
    # Then every requirement the wheel declares must be met by an installed distribution.
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
    (Path(purelib.stdout.strip()) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel], cwd=tmp_path, timeout=900)
    _run([python, "-c", _REQUIREMENTS_MET], cwd=tmp_path)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _run(
        [
            python,
            "-c",
            "import stagewarden, stagewarden.spec, stagewarden.prover, stagewarden.attest, stagewarden.runtime, "
            "stagewarden.runtime.worker",
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
