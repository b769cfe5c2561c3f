"""``benchmarks/gpu_check.py`` and ``.sh``: the CPU run of the same code, the refusals without CUDA,
and, where a GPU exists, the CUDA paths (stages on the GPU over gloo, deterministic re-execution)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.cuda.is_available()


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_no_cuda_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Without CUDA, --device cuda exits 2 with a message and writes no results."""
    assert gpu_check.main(["--device", "cuda", "--json", str(tmp_path / "r.json")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(CUDA or shutil.which("timeout") is None, reason="checks the refusal on a machine without CUDA")
def test_shell_script_without_cuda_exits_2(tmp_path: Path) -> None:
    """The shell wrapper refuses with exit 2 and a message before starting anything."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "CUDA is not available" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--rounds", "0"], ["--repeats", "1"], ["--steps", "1"]])
def test_bad_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Too few rounds, repeats or steps are refused with exit 2 before anything runs."""
    assert gpu_check.main(["--device", "cpu", *args]) == 2
    assert "at least" in capsys.readouterr().err


def test_reexecution_on_cpu_is_bitwise() -> None:
    """Every forward and backward unit of both stages re-executes bitwise on the CPU."""
    result = gpu_check.reexecution(gpu_check.job("cpu", quick=True), "cpu", repeats=2)
    assert result["bitwise"] and result["differing_units"] == []
    assert result["units"] == ["backward.s0", "backward.s1", "forward.s0", "forward.s1"]


@pytest.mark.slow
def test_cpu_run_passes_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole check on the CPU (one round, toy job): every check passes, the figures are printed
    and the JSON holds one ratio from a run with and one without receipts."""
    path = tmp_path / "out" / "gpu_check.json"
    code = gpu_check.main(["--device", "cpu", "--quick", "--rounds", "1", "--steps", "2", "--json", str(path)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    results = json.loads(path.read_text())
    assert results["passed"] and all(results["checks"].values())
    assert [(r["receipts"], r["steps_completed"]) for r in results["runs"]] == [(True, 2), (False, 2)]
    assert len(results["overhead"]["ratios"]) == 1 and results["overhead"]["ratios"][0] > 0
    assert "receipt overhead" in printed and "checks: all passed" in printed


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_reexecution_on_cuda_is_bitwise() -> None:
    """Under deterministic algorithms every unit re-executes bitwise on the GPU."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", gpu_check.CUBLAS_WORKSPACE)
    result = gpu_check.reexecution(gpu_check.job("cuda", quick=True), "cuda", repeats=3)
    assert result["bitwise"], result["differing_units"]


@pytest.mark.slow
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_gloo_run_passes(tmp_path: Path) -> None:
    """Stages on the GPU over gloo: the toy job trains, equals the one-process reference on the GPU,
    audits clean, and the card's name is recorded."""
    path = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cuda", "--quick", "--rounds", "1", "--steps", "2", "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    assert results["passed"] and results["machine"]["card"] == torch.cuda.get_device_name(0)
